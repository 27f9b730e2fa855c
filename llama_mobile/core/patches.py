"""Every patch of a third-party library's private API, in one table, with its version check and off switch.

A patch's body lives beside the code that needs it (the stages cannot import each other); it asks
``enabled(name)`` before it patches anything, and when told no it leaves the library alone, so the
library's own path runs. ``enabled`` says no when:

- the switch is off: ``LLAMA_MOBILE_PATCHES=off`` in the environment, or inside ``with patches.off():``
  (``lower(..., fast=False)`` is this switch for one lowering: ExecuTorch as shipped);
- an installed library is not the version the patch was verified against: the patch switches itself
  off with one warning instead of failing in the middle of an export.

Every patch must give the same bytes as the library's own path; ``proof`` names the tests that compare them.
This module imports no heavy library: ``llama-mobile --help`` reads core only.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENVIRONMENT = "LLAMA_MOBILE_PATCHES"
_OFF_VALUES = ("off", "0", "false", "no")


@dataclass(frozen=True)
class Patch:
    name: str
    verified: tuple[tuple[str, str], ...]  # (distribution, version) pairs it was verified against
    patches: str  # what it replaces in the library
    where: str  # the module holding its body
    proof: tuple[str, ...]  # pytest node ids that show the bytes are the library's own

    def describe(self) -> str:
        versions = ", ".join(f"{library} {version}" for library, version in self.verified)
        return f"{self.name} ({versions}): {self.patches} [{self.where}]"


_EDGE_BYTES = "tests/test_lowering_speed.py::test_trimmed_passes_give_the_same_program_bytes"
_GGUF_BYTES = "tests/test_patches.py::test_gguf_reader_patch_reads_the_same_bytes"

PATCHES: dict[str, Patch] = {patch.name: patch for patch in (
    Patch("skip-noop-decompositions", (("torch", "2.13.0"), ("executorch", "1.5.1")),
          "torch.export.ExportedProgram.run_decompositions (skipped when no op of the graph is in the "
          "table; XNNPACK's functionalization deferred) and executorch.exir.program._program."
          "_generate_edge_program (runs a deferred functionalization)",
          "llama_mobile.export.lower", (_EDGE_BYTES,)),
    Patch("fused-edge-passes", (("executorch", "1.5.1"),),
          "executorch.exir.program._program._get_aten_to_edge_passes, .OpReplacePass, .MemoryFormatOpsPass "
          "(7 ATen-to-edge re-traces fused into 2)",
          "llama_mobile.export.lower",
          (_EDGE_BYTES, "tests/test_lowering_speed.py::test_edge_passes_are_fused_into_two_retraces")),
    Patch("xnnpack-trimmed-passes", (("executorch", "1.5.1"),),
          "executorch.backends.xnnpack._passes.XNNPACKPassManager.__init__ (op-specific passes skipped on "
          "partitions without their ops; PropagateCustomMetaPass without its re-trace)",
          "llama_mobile.export.backends.xnnpack",
          (_EDGE_BYTES, "tests/test_lowering_speed.py::test_only_op_specific_passes_are_skipped")),
    Patch("xnnpack-copy-sharing-weights", (("executorch", "1.5.1"),),
          "executorch.backends.xnnpack.xnnpack_preprocess.XnnpackBackend.copy_exported_program_for_preprocess "
          "(the partition's deepcopy shares its weight tensors)",
          "llama_mobile.export.backends.xnnpack",
          (_EDGE_BYTES,
           "tests/test_lowering_speed.py::test_partitions_are_copied_for_preprocessing_without_their_weights")),
    Patch("rowwise-quantizers", (("torchao", "0.18.0"),),
          "torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor."
          "_choose_qparams_and_quantize_scale_only_hqq, .choose_qparams_affine, .quantize_affine "
          "(computed a block of rows at a time)",
          "llama_mobile.quantize.rowwise",
          ("tests/test_stream_build.py::test_rowwise_affine_equals_torchaos",
           "tests/test_stream_build.py::test_blockwise_hqq_equals_torchaos",
           "tests/test_stream_build.py::test_blockwise_hqq_keeps_torchaos_global_early_stop")),
    Patch("gguf-plain-array-reader", (("gguf", "0.19.0"),),
          "gguf.gguf_reader.np (np.memmap returns a plain ndarray view of the mapping)",
          "llama_mobile.export.gguf_loader", (_GGUF_BYTES,)),
)}

_off_depth = 0  # nesting of `with off():`
_warned: set[str] = set()  # patches that have warned once already


def switched_off() -> bool:
    """The one switch: every patch off (the environment variable, or inside ``off()``)."""
    return _off_depth > 0 or os.environ.get(ENVIRONMENT, "").strip().lower() in _OFF_VALUES


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Every patch entered inside this block leaves the library alone."""
    global _off_depth
    _off_depth += 1
    try:
        yield
    finally:
        _off_depth -= 1


@functools.cache
def installed_version(distribution: str) -> str | None:
    """The installed release, without a local build tag (torch's 2.13.0+cpu is 2.13.0); None if absent."""
    try:
        return importlib.metadata.version(distribution).split("+", 1)[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def version_mismatch(patch: Patch) -> str | None:
    """Which installed library differs from the version the patch was verified against, or None."""
    found = [f"{library} {installed_version(library) or 'not installed'} (verified against {version})"
             for library, version in patch.verified if installed_version(library) != version]
    return ", ".join(found) or None


def give_up(name: str, reason: str) -> None:
    """Tell once that a patch is off and why; the caller then takes the library's own path."""
    if name not in _warned:
        _warned.add(name)
        log.warning("patch %s switched off: %s; using the library's own code (same result, slower)", name, reason)


def enabled(name: str) -> bool:
    """May patch `name` be applied now? No when switched off, or (with one warning) on another version."""
    patch = PATCHES[name]  # a KeyError here: a patch missing from the table
    if switched_off():
        return False
    mismatch = version_mismatch(patch)
    if mismatch:
        give_up(name, mismatch)
        return False
    return True
