"""Skipping XNNPACK passes that have nothing to rewrite must not change a single byte of the program."""
import dataclasses

import torch

from export.lower import lower, runner_metadata
from export.model import build_model
from llama_mobile.targets import get_target
from quantize.apply import quantize_model
from quantize.recipe import load_recipe
from tests.checkpoints import TINY, random_state_dict

TIED = dataclasses.replace(TINY, n_layers=1, tied_embeddings=True)


def test_trimmed_passes_give_the_same_program_bytes(custom_ops):
    def lowered(fast: bool):
        model = build_model(TIED, 32, random_state_dict(TIED, seed=2))
        quantize_model(model, load_recipe("8da4w-mixed"), tied=True)
        metadata = runner_metadata(bos_id=1, eos_ids=(2,), context_len=32, max_seq_len=16,
                                   vocab_size=TIED.vocab_size, n_layers=TIED.n_layers)
        return lower(model, get_target("xnnpack"), metadata, 16, external_weights=True, fast=fast)

    fast, stock = lowered(True), lowered(False)
    assert fast.pte == stock.pte and fast.weights == stock.weights
    assert fast.delegated_calls == stock.delegated_calls > 0


def test_only_op_specific_passes_are_skipped(custom_ops):
    from executorch.backends.xnnpack import _passes

    from export.backends.xnnpack import OP_SPECIFIC_PASSES, lowering_context

    exported = torch.export.export(torch.nn.Linear(4, 4), (torch.ones(1, 4),))
    stock = [p.__name__ for p in _passes.XNNPACKPassManager(exported).passes]
    with lowering_context(get_target("xnnpack")):
        trimmed = [p.__name__ for p in _passes.XNNPACKPassManager(exported).passes]
        explicit = _passes.XNNPACKPassManager(exported, passes=[_passes.ConvertToLinearPass]).passes
    assert set(stock) - set(trimmed) == set(OP_SPECIFIC_PASSES) and "ConvertToLinearPass" in trimmed
    assert explicit == [_passes.ConvertToLinearPass]
    conv = torch.export.export(torch.nn.Conv2d(1, 1, 3), (torch.ones(1, 1, 5, 5),))
    with lowering_context(get_target("xnnpack")):
        kept = [p.__name__ for p in _passes.XNNPACKPassManager(conv).passes]
    assert "Conv1dUnsqueezePass" in kept and "ChannelsLastTaggedReshapePass" in kept
    assert [p.__name__ for p in _passes.XNNPACKPassManager(exported).passes] == stock  # restored
