"""Skipping XNNPACK passes that have nothing to rewrite must not change a single byte of the program."""
import dataclasses

import torch

from llama_mobile.core.targets import get_target
from llama_mobile.export.lower import lower, runner_metadata
from llama_mobile.export.model import build_model
from llama_mobile.quantize.apply import quantize_model
from llama_mobile.quantize.recipe import load_recipe
from tests.checkpoints import TINY, random_state_dict

TIED = dataclasses.replace(TINY, n_layers=2, tied_embeddings=True)


def test_trimmed_passes_give_the_same_program_bytes(custom_ops):
    def lowered(fast: bool):
        model = build_model(TIED, 32, random_state_dict(TIED, seed=2))
        quantize_model(model, load_recipe("8da4w-mixed"), tied=True)
        metadata = runner_metadata(bos_id=1, eos_ids=(2,), context_len=32, max_seq_len=16,
                                   vocab_size=TIED.vocab_size, n_layers=TIED.n_layers)
        return lower(model, get_target("xnnpack"), metadata, 16, external_weights=True, fast=fast)

    fast, stock = lowered(True), lowered(False)
    assert fast.pte == stock.pte and bytes(fast.weights) == bytes(stock.weights)
    assert fast.delegated_calls == stock.delegated_calls > 0


def test_edge_passes_are_fused_into_two_retraces():
    from executorch.exir import EdgeCompileConfig
    from executorch.exir.program import _program

    from llama_mobile.export.lower import fused_edge_passes

    stock, _ = _program._get_aten_to_edge_passes(EdgeCompileConfig())
    with fused_edge_passes():
        fused, _ = _program._get_aten_to_edge_passes(EdgeCompileConfig())
        assert _program.OpReplacePass()(None).modified is False  # applied inside the fused pass
    names = [type(getattr(p, "__wrapped__", p)).__name__ for p in fused]
    assert len(stock) - len(fused) == 3
    assert "FusedNormalizeTransposeReplaceBrokenOpsWithFunctionalOpsScalarToTensorSymToTensor" in names
    assert names[-1] == "FusedRemoveMixedTypeOperatorsOpReplaceMemoryFormatOps"
    assert _program.OpReplacePass.__name__ == "OpReplacePass"  # restored


def test_only_op_specific_passes_are_skipped(custom_ops):
    from executorch.backends.xnnpack import _passes

    from llama_mobile.export.backends.xnnpack import (
        OP_SPECIFIC_PASSES,
        lowering_context,
    )

    exported = torch.export.export(torch.nn.Linear(4, 4), (torch.ones(1, 4),))
    stock = [p.__name__ for p in _passes.XNNPACKPassManager(exported).passes]
    with lowering_context(get_target("xnnpack")):
        trimmed = [p.__name__ for p in _passes.XNNPACKPassManager(exported).passes]
        explicit = _passes.XNNPACKPassManager(exported, passes=[_passes.ConvertToLinearPass]).passes
    assert set(stock) - set(trimmed) == set(OP_SPECIFIC_PASSES) | {"PropagateCustomMetaPass"}
    assert "PropagateCustomMetaWithoutRetrace" in trimmed
    assert explicit == [_passes.ConvertToLinearPass]

    class MatMul(torch.nn.Module):
        def forward(self, a, b):
            return torch.mm(a, b)

    matmul = torch.export.export(MatMul(), (torch.ones(2, 3), torch.ones(3, 4))).run_decompositions()
    with lowering_context(get_target("xnnpack")):
        assert "ConvertToLinearPass" in [p.__name__ for p in _passes.XNNPACKPassManager(matmul).passes]
    conv = torch.export.export(torch.nn.Conv2d(1, 1, 3), (torch.ones(1, 1, 5, 5),))
    with lowering_context(get_target("xnnpack")):
        kept = [p.__name__ for p in _passes.XNNPACKPassManager(conv).passes]
    assert "Conv1dUnsqueezePass" in kept and "ChannelsLastTaggedReshapePass" in kept
    assert [p.__name__ for p in _passes.XNNPACKPassManager(exported).passes] == stock  # restored


def test_partitions_are_copied_for_preprocessing_without_their_weights():
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    from llama_mobile.export.backends.xnnpack import lowering_context

    exported = torch.export.export(torch.nn.Linear(4, 4), (torch.ones(1, 4),))
    stock = XnnpackBackend.copy_exported_program_for_preprocess(exported, [])
    assert all(stock.state_dict[k] is not v for k, v in exported.state_dict.items())  # ExecuTorch's deepcopy
    with lowering_context(get_target("xnnpack")):
        copied = XnnpackBackend.copy_exported_program_for_preprocess(exported, [])
    assert copied.graph_module is not exported.graph_module
    assert copied.state_dict.keys() == exported.state_dict.keys()
    assert all(copied.state_dict[k] is v for k, v in exported.state_dict.items())
    restored = XnnpackBackend.copy_exported_program_for_preprocess(exported, [])
    assert all(restored.state_dict[k] is not v for k, v in exported.state_dict.items())
