"""XNNPACK: the Arm (KleidiAI) and x86 CPU backend every phone runs."""
from __future__ import annotations

import contextlib

from llama_mobile.core import patches
from llama_mobile.core.targets import Target
from llama_mobile.export.backends.base import Backend, register


class XnnpackBackend(Backend):
    """Ships inside the executorch wheel: nothing to check; runs on this host, so parity runs the program."""

    name = "xnnpack"
    casts_model_dtype = True  # fp16/bf16 graphs run in XNNPACK's own f16 kernels
    external_weights = True
    defers_functionalization = True  # its partitioner always decomposes next

    def partitioners(self, target: Target) -> list:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]

    def lowering_context(self, target: Target):
        return lowering_context(target)


# XNNPACK's preprocess runs every one of its passes on every partition, and each pass re-traces the
# partition with fake tensors (~1.5% of the lowering time per pass, the SDPA matcher ~8%). The passes
# below only rewrite the ops named beside them; on a partition without those ops they change nothing
# (the program's bytes are identical, tests/test_lowering_speed.py checks it), so they are skipped there.
OP_SPECIFIC_PASSES = {
    "ConvertToUpsampleBilinear2d": ("upsample",),
    "FuseBatchNormPass": ("batch_norm",),
    "DecomposeBatchNorm": ("batch_norm",),
    "Conv1dUnsqueezePass": ("conv",),
    "PReLUReshapePass": ("prelu",),
    "InsertPadQDQPass": ("constant_pad_nd",),
    "DecomposeConcatenate": ("cat",),
    "ChannelsLastTaggedReshapePass": ("conv", "pool", "batch_norm", "upsample", "pixel_shuffle"),
    # Matches decomposed attention (matmul, softmax); the LLM's custom_sdpa stays outside XNNPACK. Each
    # call also re-traces its pattern graphs: the dearest pass by far on a partition without softmax.
    "ConvertToSDPAPass": ("softmax",),
    "ConvertToLinearPass": ("mm",),  # mm / addmm / bmm -> linear; linear itself is preserved already
    "FuseActivationPass": ("relu", "hardtanh"),
    "RemoveGetItemPass": ("max",),  # max_pool2d_with_indices, max.dim
    "RemoveRedundantCopyPass": ("_to_copy",),
    "DimOrderOpsRevertPass": ("dim_order",),  # _to_dim_order_copy, _clone_dim_order, _empty_dim_order
}


def _op_names(exported_program) -> set[str]:
    return {str(getattr(node.target, "__name__", node.target)) for node in exported_program.graph.nodes
            if node.op == "call_function"}


@contextlib.contextmanager
def lowering_context(target: Target):
    """For the duration of one lowering: skip XNNPACK passes whose ops a partition does not contain,
    and copy partitions for preprocessing without copying their weights."""
    with trimmed_passes(), copy_sharing_weights():
        yield


@contextlib.contextmanager
def trimmed_passes():
    """Patch "xnnpack-trimmed-passes" (core/patches.py): off, XNNPACK runs all its passes."""
    if not patches.enabled("xnnpack-trimmed-passes"):
        yield
        return
    from executorch.backends.xnnpack import _passes

    manager = _passes.XNNPACKPassManager
    original = manager.__init__

    def trimmed_init(self, exported_program, passes=None):
        original(self, exported_program, passes)
        if passes:  # an explicit list from a compile spec: leave it alone
            return
        ops = _op_names(exported_program)

        def needed(pass_) -> bool:
            triggers = OP_SPECIFIC_PASSES.get(pass_.__name__)
            return triggers is None or any(t in op for op in ops for t in triggers)

        self.passes = [_without_retrace(p) if p.__name__ == "PropagateCustomMetaPass" else p
                       for p in self.passes if needed(p)]

    manager.__init__ = trimmed_init
    try:
        yield
    finally:
        manager.__init__ = original


@contextlib.contextmanager
def copy_sharing_weights():
    """Patch "xnnpack-copy-sharing-weights" (core/patches.py): off, ExecuTorch deep-copies the weights."""
    if not patches.enabled("xnnpack-copy-sharing-weights"):
        yield
        return
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend as Preprocess

    Preprocess.copy_exported_program_for_preprocess = classmethod(_copy_sharing_weights)
    try:
        yield
    finally:
        del Preprocess.copy_exported_program_for_preprocess  # back to BackendDetails' deepcopy


def _without_retrace(propagate_custom_meta: type) -> type:
    """XNNPACK's PropagateCustomMetaPass copies node.meta["custom"] onto q/dq nodes, then re-traces the
    partition only to regenerate metadata, which ConstPropPass, always run after it, regenerates again."""

    class PropagateCustomMetaWithoutRetrace(propagate_custom_meta):
        def call(self, graph_module):
            from executorch.backends.xnnpack.utils.quant_utils import (
                is_dequant,
                is_quant,
            )
            from executorch.exir.pass_base import PassResult

            for node in graph_module.graph.nodes:
                if (is_quant(node) or is_dequant(node)) and node.all_input_nodes:
                    parent = node.args[0]
                    if hasattr(parent, "meta") and "custom" in parent.meta:
                        node.meta["custom"] = parent.meta["custom"]
            graph_module.recompile()
            return PassResult(graph_module, True)

    return PropagateCustomMetaWithoutRetrace


def _copy_sharing_weights(cls, edge_program, compile_specs):
    """ExecuTorch deep-copies every partition's program before preprocessing, all partitions at once,
    so that a backend may rewrite the graph: that copies every weight too (+2.8 GB of unpacked int8
    for Llama 3.2 3B). XNNPACK's preprocess rewrites graphs but only reads weights (packing makes new
    bytes), so the copy here shares the weight tensors and copies the rest."""
    import copy

    import torch

    weights = [*edge_program.state_dict.values(), *edge_program.constants.values()]
    memo = {id(tensor): tensor for tensor in weights if isinstance(tensor, torch.Tensor)}
    return copy.deepcopy(edge_program, memo)


register(XnnpackBackend())
