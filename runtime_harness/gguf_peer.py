"""The llama.cpp peers of a bundle: its GGUF source requantized by llama.cpp's own quantizer.

One peer at the type nearest the recipe (`bench --vs-llama-cpp`, through llama-cpp-python's ctypes
`llama_model_quantize`), or a list of types (`bench --quality --peer-types Q4_0,IQ4_XS+imatrix`, through
the `llama-quantize` tool of `llama-mobile peer build`, optionally with an importance matrix that
`llama-imatrix` makes on the calibration text the export uses).
"""
from __future__ import annotations

import ctypes
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llama_mobile.core.errors import ResourceError, UsageError
from llama_mobile.core.manifest import Manifest
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.runtime_harness.gguf_writer import write_gguf
from llama_mobile.runtime_harness.llama_cpp_build import llama_cpp_module, require_tool
from llama_mobile.runtime_harness.parity import CORPUS_DIR

# The llama.cpp type nearest to each recipe's linear scheme.
NEAREST_GGUF_TYPE = {"8da4w": "Q4_0", "4w": "Q4_0", "8da8w": "Q8_0", "8w": "Q8_0", "fp32": "F32"}
# llama-quantize's type names (tools/quantize/quantize.cpp, llama-cpp-python 0.3.36's llama.cpp).
QUANT_TYPES = ("Q1_0", "Q2_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S",
               "IQ1_M", "TQ1_0", "TQ2_0", "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_S", "IQ3_M", "Q3_K", "IQ3_XS",
               "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_S", "Q4_K_M", "Q5_K", "Q5_K_S",
               "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32")
# Types llama.cpp refuses to make without an importance matrix.
NEEDS_IMATRIX = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M")
IMATRIX_SUFFIX = "+imatrix"
CALIBRATION_TEXT = CORPUS_DIR / "calibration.txt"  # the export's default calibration text


@dataclass(frozen=True)
class PeerType:
    gguf_type: str  # a llama-quantize type name
    imatrix: bool = False

    @property
    def label(self) -> str:
        return self.gguf_type + (IMATRIX_SUFFIX if self.imatrix else "")


def parse_peer_types(text: str, imatrix: bool = False) -> list[PeerType]:
    """"Q4_0,IQ4_XS+imatrix" -> peer types, in order, without repeats. `imatrix` applies it to every one."""
    peers: list[PeerType] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, with_imatrix = item, imatrix
        if name.lower().endswith(IMATRIX_SUFFIX):
            name, with_imatrix = name[: -len(IMATRIX_SUFFIX)], True
        name = name.upper()
        if name not in QUANT_TYPES:
            raise UsageError(f"unknown llama.cpp type {item!r}",
                             fix=f"one of {', '.join(QUANT_TYPES)}, optionally with {IMATRIX_SUFFIX}")
        if name in NEEDS_IMATRIX and not with_imatrix:
            raise UsageError(f"llama.cpp makes {name} only with an importance matrix", fix=f"use {name}{IMATRIX_SUFFIX}")
        peer = PeerType(name, with_imatrix)
        if peer not in peers:
            peers.append(peer)
    if not peers:
        raise UsageError("--peer-types names no type", fix="e.g. --peer-types Q4_0,IQ4_XS,Q4_K_M")
    return peers


def nearest_type(manifest: Manifest) -> str:
    scheme = manifest.linear_scheme
    if scheme not in NEAREST_GGUF_TYPE:
        raise UsageError(f"no llama.cpp type is comparable to scheme {scheme!r}", fix="pass --vs-llama-cpp FILE.gguf")
    return NEAREST_GGUF_TYPE[scheme]


def requantize(source: Path, destination: Path, gguf_type: str) -> Path:
    """llama.cpp's quantizer through llama-cpp-python's ctypes binding."""
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}" if gguf_type != "F32" else "LLAMA_FTYPE_ALL_F32")
    params.allow_requantize = True
    params.nthread = 2
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params))
    if status != 0 or not destination.exists():
        raise ResourceError(f"llama.cpp could not quantize to {gguf_type} (status {status})", path=source,
                            fix="pass a ready GGUF with --vs-llama-cpp FILE.gguf")
    return destination


def run_tool(command: list[str], what: str, path: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr + done.stdout).strip().splitlines()
        reason = next((l.strip() for l in reversed(lines) if "error" in l.lower()), lines[-1] if lines else "no output")
        raise ResourceError(f"{what} failed ({reason[:200]})", path=path)


def quantize_tool(source: Path, destination: Path, gguf_type: str, imatrix: Path | None = None,
                  threads: int = 2) -> Path:
    """`llama-quantize --allow-requantize [--imatrix FILE] SOURCE DESTINATION TYPE THREADS`."""
    command = [str(require_tool("llama-quantize")), "--allow-requantize",
               *(["--imatrix", str(imatrix)] if imatrix else []), str(source), str(destination), gguf_type,
               str(threads)]
    run_tool(command, f"llama-quantize to {gguf_type}", source)
    return destination


def make_imatrix(source: Path, text: Path, destination: Path, threads: int = 2, context: int = 512) -> Path:
    """llama.cpp's importance matrix of `source` over `text` (chunks of `context` tokens)."""
    command = [str(require_tool("llama-imatrix")), "-m", str(source), "-f", str(text), "-o", str(destination),
               "-c", str(context), "-b", str(context), "-t", str(threads), "--no-ppl", "-ngl", "0"]
    run_tool(command, "llama-imatrix", source)
    if not destination.exists():
        raise ResourceError("llama-imatrix wrote no matrix (is the text shorter than one chunk?)", path=text)
    return destination


def source_checkpoint(manifest: Manifest) -> Path:
    first = manifest.model.source_paths[0]
    return first if first.suffix == ".gguf" else first.parent  # Meta and HF checkpoints are folders


def source_gguf(manifest: Manifest, scratch: Path) -> tuple[Path, bool]:
    """(the bundle's source as a GGUF, whether it was written here). A GGUF source is used as it is (a
    quantized one is dequantized by llama.cpp's quantizer, as our loader dequantizes it for the reference);
    a Meta or Hugging Face checkpoint is written as an F16 GGUF (gguf_writer) the way llama.cpp's
    converter writes it."""
    source = source_checkpoint(manifest)
    if not source.exists():
        raise UsageError("the checkpoint the bundle was exported from is gone", path=source,
                         fix="pass --gguf FILE.gguf made from it by llama.cpp")
    if manifest.model.source_format == "gguf":
        return source, False
    preset = manifest.model.preset
    loaded = load_checkpoint(preset if preset in MODEL_PRESETS else GENERIC_MODEL, source)
    converted = write_gguf(loaded, scratch / "source-F16.gguf", name=preset)
    del loaded
    return converted, True


def peer_for_bundle(manifest: Manifest, scratch: Path) -> Path:
    """The bundle's source weights through llama.cpp's quantizer, at the type nearest its recipe."""
    gguf_type = nearest_type(manifest)
    source, written = source_gguf(manifest, scratch)
    try:
        return requantize(source, scratch / f"peer-{gguf_type}.gguf", gguf_type)
    finally:
        if written:
            source.unlink()


def peers_for_bundle(manifest: Manifest, peers: list[PeerType], scratch: Path, threads: int = 2,
                     calibration: Path = CALIBRATION_TEXT,
                     emit: Callable[[str], None] = lambda line: None) -> dict[PeerType, Path]:
    """One GGUF per peer type, made by llama-quantize from the bundle's source; the importance matrix (when
    one is asked for) is made once, by llama-imatrix on the calibration text."""
    source, written = source_gguf(manifest, scratch)
    try:
        imatrix = None
        if any(p.imatrix for p in peers):
            emit(f"llama-imatrix on {calibration.name}")
            imatrix = make_imatrix(source, calibration, scratch / "imatrix.gguf", threads)
        made = {}
        for peer in peers:
            emit(f"llama-quantize -> {peer.label}")
            made[peer] = quantize_tool(source, scratch / f"peer-{peer.label}.gguf", peer.gguf_type,
                                       imatrix if peer.imatrix else None, threads)
        return made
    finally:
        if written:
            source.unlink()
