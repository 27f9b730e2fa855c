"""torch.export -> to_edge_transform_and_lower -> to_executorch, with the LLM runner's metadata baked in."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.export import Dim, ExportedProgram, export
from torch.fx.passes.infra.pass_base import PassResult

from llama_mobile.core import patches
from llama_mobile.core.errors import ExportError
from llama_mobile.core.targets import Target
from llama_mobile.export.backends import get_backend

log = logging.getLogger(__name__)


@dataclass
class LoweredProgram:
    pte: bytes
    target: str
    metadata: dict
    delegated_calls: int
    portable_ops: dict[str, int]
    delegated_ops: int = 0  # edge ops inside the delegates (their share of the whole program)
    seconds: dict[str, float] = field(default_factory=dict)
    # With external weights: the .ptd holding every constant, each distinct tensor once (bytes, or
    # ExecuTorch's Cord: pieces that write_file streams out, never joined into one block of memory).
    weights: object | None = None


def runner_metadata(*, bos_id: int, eos_ids: tuple[int, ...], context_len: int, max_seq_len: int,
                    vocab_size: int, n_layers: int) -> dict:
    """The constant methods ExecuTorch's TextLLMRunner (and the Android/iOS runners) read."""
    return {
        "get_bos_id": bos_id,
        "get_eos_ids": list(eos_ids),
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": context_len,
        "get_vocab_size": vocab_size,
        "get_n_layers": n_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }


def partitioners_for(target: Target) -> list:

    return get_backend(target).partitioners(target)


WEIGHTS_TAG = "weights"


def tag_weights_external(exported, keep_inside: Callable[[str], bool] = lambda name: False) -> int:
    """Send every constant, inside delegates or not, to one external data file (except those whose graph
    name ``keep_inside`` picks: the program carries them, e.g. a LoRA adapter's own matrices).

    ExecuTorch stores a delegate's weights and the program's own constants in separate places, so a tied
    embedding (read by the embedding op) and output layer (packed by XNNPACK) would be stored twice. In one
    external file both go through the same content-addressed store, and identical bytes are kept once.
    """
    tagged = 0
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name not in exported.graph_signature.user_inputs \
                and not keep_inside(node.name):
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = WEIGHTS_TAG
            tagged += 1
    return tagged


@contextlib.contextmanager
def skip_noop_decompositions(defer_functionalization: bool = False):
    """Skip a ``run_decompositions(table)`` call when no op of the graph is in the table.

    to_edge_transform_and_lower decomposes three times: functionalize, decompose all but the ops the
    partitioner keeps, then decompose again with the full table (for kept ops that failed the
    partitioner's checks). Each call re-traces the whole graph (~15% of the lowering each). When no op
    of the graph is in the table, the call can only re-trace: ExecuTorch skips it on that same test in
    its other branch, and here it is applied to every call with a non-empty table.

    With defer_functionalization (XNNPACK, whose partitioner takes the branch that always decomposes
    next), the functionalizing call is folded into the next one that re-traces: any
    run_decompositions functionalizes. The partitioner's ops_to_not_decompose, which runs in between,
    returns op targets from its configs without reading the graph.

    Patch "skip-noop-decompositions" (core/patches.py): off, ExecuTorch decomposes as shipped.
    """
    if not patches.enabled("skip-noop-decompositions"):
        yield
        return
    from executorch.exir.graph_module import contains_any_call_fn_target_op
    from executorch.exir.program import _program

    original = ExportedProgram.run_decompositions

    # Their decompositions re-emit the same op (x.size(d) traces back to sym_size): nothing to do.
    self_reproducing = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_stride.int,
                        torch.ops.aten.sym_numel.default, torch.ops.aten.sym_storage_offset.default}

    def run_decompositions(self, decomp_table=None, decompose_custom_triton_ops=False):
        if decompose_custom_triton_ops or decomp_table is None:
            return original(self, decomp_table, decompose_custom_triton_ops)
        if not decomp_table and defer_functionalization:
            # Functionalize only: left to the next call, whose re-trace functionalizes as it decomposes.
            self._llama_mobile_unfunctionalized = True
            return self
        if not decomp_table:
            return original(self, decomp_table, decompose_custom_triton_ops)
        effective = set(decomp_table.keys()) - self_reproducing
        if contains_any_call_fn_target_op(self.graph_module, effective):
            return original(self, decomp_table, decompose_custom_triton_ops)
        if getattr(self, "_llama_mobile_unfunctionalized", False):
            return original(self, {}, decompose_custom_triton_ops)
        return self

    generate_edge_program = _program._generate_edge_program

    def functionalized_then_generate(config, program, *args, **kwargs):
        # ExecuTorch skips a decomposition with its own no-op test in one branch, without calling
        # run_decompositions: a deferred functionalization is done here, before edge conversion.
        if getattr(program, "_llama_mobile_unfunctionalized", False):
            program = original(program, {})
        return generate_edge_program(config, program, *args, **kwargs)

    ExportedProgram.run_decompositions = run_decompositions
    _program._generate_edge_program = functionalized_then_generate
    try:
        yield
    finally:
        ExportedProgram.run_decompositions = original
        _program._generate_edge_program = generate_edge_program


@contextlib.contextmanager
def lowering_context(target: Target, fast: bool = True):
    """The speed-ups for the lowering call. fast=False is core.patches' off switch for this one call:
    ExecuTorch as shipped (LLAMA_MOBILE_PATCHES=off turns every patch of every stage off)."""

    backend = get_backend(target)
    if not fast:
        with patches.off():
            yield
        return
    backend_context = backend.lowering_context(target)
    defer = backend.defers_functionalization
    with skip_noop_decompositions(defer), fused_edge_passes(), backend_context, without_cycle_collection():
        yield


def _fused(*passes: type) -> type:
    """One ExportPass that applies `passes` in order during a single re-trace.

    Each of these passes rewrites one operator call and hands the result on with
    super().call_operator(...); in a class whose bases are the passes in order, that call reaches the
    next pass instead of the tracer, so every node goes through all of them in the order ExecuTorch
    runs them, and the graph is traced once instead of once per pass."""
    return type("Fused" + "".join(p.__name__.removesuffix("Pass") for p in passes), passes, {})


class _AlreadyApplied:
    """Stands in for a pass that a fused pass already applied."""

    def __call__(self, graph_module):

        return PassResult(graph_module, False)


@contextlib.contextmanager
def fused_edge_passes():
    """ATen -> edge conversion with 2 re-traces instead of 7 (~4% of the lowering each, profiled).

    ExecuTorch 1.5.1 runs these node-local passes one after another, each re-tracing the whole graph
    with fake tensors: NormalizeTranspose, ReplaceBrokenOpsWithFunctionalOps, ScalarToTensor,
    SymToTensor, then (after four graph-level passes) RemoveMixedTypeOperators, OpReplace and
    MemoryFormatOps. Fused as two runs of consecutive passes, the program is byte-identical
    (tests/test_lowering_speed.py compares it with ExecuTorch's stock lowering).

    Patch "fused-edge-passes" (core/patches.py): off, or when ExecuTorch's pass list is not the one
    fused here, ExecuTorch runs its passes one by one."""
    if not patches.enabled("fused-edge-passes"):
        yield
        return
    from executorch.exir import EdgeCompileConfig
    from executorch.exir.passes import (
        MemoryFormatOpsPass,
        NormalizeTransposePass,
        ReplaceBrokenOpsWithFunctionalOpsPass,
        ScalarToTensorPass,
    )
    from executorch.exir.passes.remove_mixed_type_operators import (
        RemoveMixedTypeOperators,
    )
    from executorch.exir.passes.replace_aten_with_edge_pass import OpReplacePass
    from executorch.exir.passes.sym_to_tensor_pass import SymToTensorPass
    from executorch.exir.program import _program

    original = (_program._get_aten_to_edge_passes, _program.OpReplacePass, _program.MemoryFormatOpsPass)
    first_run = (NormalizeTransposePass, ReplaceBrokenOpsWithFunctionalOpsPass, ScalarToTensorPass,
                 SymToTensorPass)
    second_run = (RemoveMixedTypeOperators, OpReplacePass, MemoryFormatOpsPass)

    def first_run_start(pre) -> int | None:
        """Where the first run starts in ExecuTorch's passes; None when they are not the ones fused here."""
        kinds = [type(getattr(p, "__wrapped__", p)) for p in pre]  # the pass manager wraps some in functions
        start = kinds.index(first_run[0]) if first_run[0] in kinds else 0
        if tuple(kinds[start:start + len(first_run)]) != first_run or kinds[-1] is not second_run[0]:
            return None
        return start

    # Checked before anything is patched (the list does not depend on the config): on a mismatch
    # ExecuTorch's own passes run, never a half-fused list.
    if first_run_start(original[0](EdgeCompileConfig())[0]) is None:
        patches.give_up("fused-edge-passes", "ExecuTorch's ATen-to-edge passes are not the ones fused here")
        yield
        return

    def aten_to_edge_passes(config):
        pre, post = original[0](config)
        start = first_run_start(pre)
        if start is None:
            raise ExportError("ExecuTorch's ATen-to-edge passes changed during the lowering",
                              fix="export with LLAMA_MOBILE_PATCHES=off, and report it")
        # MemoryFormatOps runs only with dim order on, as in ExecuTorch's _generate_edge_program.
        last_run = second_run if not config._skip_dim_order else second_run[:2]
        fused = pre[:start] + [_fused(*first_run)()] + pre[start + len(first_run):-1] + [_fused(*last_run)()]
        return fused, post

    _program._get_aten_to_edge_passes = aten_to_edge_passes
    _program.OpReplacePass = _program.MemoryFormatOpsPass = _AlreadyApplied
    try:
        yield
    finally:
        _program._get_aten_to_edge_passes, _program.OpReplacePass, _program.MemoryFormatOpsPass = original


@contextlib.contextmanager
def without_cycle_collection():
    """Python's cycle collector, left on, rescans every live object of the ever-growing FX graphs and
    fake tensors again and again: ~25% of the lowering time at 30 blocks (188 s -> 143 s, measured).
    The cycles the lowering leaves behind are collected once, at the end."""

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


def _tagging(partitioner, keep_inside: Callable[[str], bool]):
    """Tag the weights on the graph the partitioner sees (after decomposition, where tags survive)."""
    partition = partitioner.partition

    def tag_then_partition(exported_program):
        tag_weights_external(exported_program, keep_inside)
        return partition(exported_program)

    partitioner.partition = tag_then_partition
    return partitioner


def lower(model: torch.nn.Module, target: Target, metadata: dict, max_seq_len: int,
          external_weights: bool = False, fast: bool = True,
          keep_inside: Callable[[str], bool] = lambda name: False) -> LoweredProgram:
    """``keep_inside``: with external weights, the constants (by graph name) the program keeps itself."""
    from executorch.exir import (
        EdgeCompileConfig,
        ExecutorchBackendConfig,
        to_edge_transform_and_lower,
    )
    from executorch.exir.passes import MemoryPlanningPass

    seconds: dict[str, float] = {}
    input_pos = torch.tensor([0], dtype=torch.long)
    if metadata.get("enable_dynamic_shape", True):
        # The prompt length varies at run time: the runner prefills up to max_seq_len tokens per call.
        tokens = torch.zeros((1, 2), dtype=torch.long)
        dynamic = ({1: Dim("seq", min=1, max=max_seq_len)}, None)
    else:  # one token per call; the runner prefills token by token
        tokens, dynamic = torch.zeros((1, 1), dtype=torch.long), None
    started = time.perf_counter()
    try:
        with torch.no_grad():
            exported = export(model, (tokens, input_pos), dynamic_shapes=dynamic, strict=False)
        seconds["torch_export"] = time.perf_counter() - started
        log.info("torch.export done in %.1fs; lowering to %s", seconds["torch_export"], target.name)
        started = time.perf_counter()
        with lowering_context(target, fast):
            edge = to_edge_transform_and_lower(
                exported,
                partitioner=[_tagging(p, keep_inside) for p in partitioners_for(target)] if external_weights
                else partitioners_for(target),
                compile_config=EdgeCompileConfig(_check_ir_validity=False),
                constant_methods=metadata,
            )
        seconds["lower"] = time.perf_counter() - started
        started = time.perf_counter()
        program = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            external_constants=(lambda node: None if keep_inside(node.name) else WEIGHTS_TAG)
            if external_weights else False,
        ))
        weights = None
        if external_weights:
            data_files = program._tensor_data  # no public accessor besides write_tensor_data_to_file
            if set(data_files) != {WEIGHTS_TAG}:
                raise ExportError(f"expected one weights file, ExecuTorch produced {sorted(data_files)}",
                                  fix="export without external weights")
            weights = data_files[WEIGHTS_TAG]  # a Cord of the tensors' buffers: written out without a copy
        seconds["to_executorch"] = time.perf_counter() - started
    except ExportError:
        raise
    except Exception as exc:  # torch.export / ExecuTorch raise many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"lowering to {target.name} failed: {first}",
                          fix="report this with the command line; try --recipe fp32 to isolate it") from exc
    graph_module = edge.exported_program().graph_module
    delegated, portable = _count_ops(graph_module)
    return LoweredProgram(pte=program.buffer, target=target.name, metadata=metadata,
                          delegated_calls=delegated, portable_ops=portable, seconds=seconds, weights=weights,
                          delegated_ops=_count_delegated_ops(graph_module))


def data_sha256(data) -> str:
    """SHA-256 of a weights file's bytes (bytes, or a Cord hashed piece by piece, never joined)."""
    digest = hashlib.sha256()
    for piece in getattr(data, "_buffers", [data]):
        digest.update(piece if isinstance(piece, (bytes, bytearray, memoryview)) else piece.to_bytes())
    return digest.hexdigest()


def _count_ops(graph_module) -> tuple[int, dict[str, int]]:
    delegated, portable = 0, {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegated += 1
        elif name not in ("getitem",):
            portable[name] = portable.get(name, 0) + 1
    return delegated, portable


def _count_delegated_ops(graph_module) -> int:
    """Ops the delegates took over, counted in the edge programs they were lowered from."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    return sum(1 for module in graph_module.children() if isinstance(module, LoweredBackendModule)
               for node in module.original_module.graph.nodes if node.op == "call_function"
               and getattr(node.target, "__name__", "") != "getitem")
