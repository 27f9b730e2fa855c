"""XNNPACK: the Arm (KleidiAI) and x86 CPU backend every phone runs."""
from __future__ import annotations

import contextlib

from llama_mobile.targets import Target

MODEL_OPTIONS: dict = {}


def check_environment(target: Target) -> None:
    """XNNPACK ships inside the executorch wheel: nothing to check."""


def partitioners(target: Target) -> list:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


# XNNPACK's preprocess runs every one of its passes on every partition, and each pass re-traces the
# partition with fake tensors (~1.5% of the lowering time per pass; skipping these saves ~7% on SmolLM2
# shapes, measured). The passes below only rewrite the ops named
# beside them; on a partition without those ops they change nothing (the program's bytes are identical,
# tests/test_lowering_speed.py checks it), so they are skipped there.
OP_SPECIFIC_PASSES = {
    "ConvertToUpsampleBilinear2d": ("upsample",),
    "FuseBatchNormPass": ("batch_norm",),
    "DecomposeBatchNorm": ("batch_norm",),
    "Conv1dUnsqueezePass": ("conv",),
    "PReLUReshapePass": ("prelu",),
    "InsertPadQDQPass": ("constant_pad_nd",),
    "DecomposeConcatenate": ("cat",),
    "ChannelsLastTaggedReshapePass": ("conv", "pool", "batch_norm", "upsample", "pixel_shuffle"),
}


def _op_names(exported_program) -> set[str]:
    return {str(getattr(node.target, "__name__", node.target)) for node in exported_program.graph.nodes
            if node.op == "call_function"}


@contextlib.contextmanager
def lowering_context(target: Target):
    """Skip XNNPACK passes whose ops a partition does not contain, for the duration of one lowering."""
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

        self.passes = [p for p in self.passes if needed(p)]

    manager.__init__ = trimmed_init
    try:
        yield
    finally:
        manager.__init__ = original
