"""Building a block at a time gives the same reference logits and the same quantized weights as
building the whole float model first; blockwise HQQ equals torchao's; paged-out weights read back."""
import contextlib
import dataclasses

import pytest
import torch

from llama_mobile.export.model import build_model, skeleton
from llama_mobile.export.stream_build import fill_streaming
from llama_mobile.quantize.apply import PartQuantizer, quantize_model
from llama_mobile.quantize.recipe import load_recipe
from llama_mobile.runtime_harness.parity import reference_logits
from tests.checkpoints import TINY, random_state_dict

TIED = dataclasses.replace(TINY, dim=128, ffn_hidden=256, tied_embeddings=True)
UNTIED = dataclasses.replace(TINY, dim=128, ffn_hidden=256)
TOKENS = [1, 5, 9, 200, 17, 3, 44, 101]


def _plain_tensors(model):
    out = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "qdata"):
            out[name + ".qdata"], out[name + ".scale"] = value.qdata, value.scale
        else:
            out[name] = value.dequantize() if hasattr(value, "dequantize") and value.is_quantized else value
    return out


@pytest.mark.parametrize("arch", [TIED, UNTIED], ids=["tied", "untied"])
@pytest.mark.parametrize("recipe_name", ["8da4w-mixed", "8da4w", "fp32"])
def test_streaming_matches_building_whole(custom_ops, arch, recipe_name):
    recipe = load_recipe(recipe_name)
    state = random_state_dict(arch, seed=3)
    whole = build_model(arch, 32, dict(state))
    expected_reference = reference_logits(whole, TOKENS)
    expected_configs = quantize_model(whole, recipe, tied=arch.tied_embeddings)

    streamed = skeleton(arch, 32)
    quantizer = PartQuantizer(streamed, recipe, tied=arch.tied_embeddings)
    parts = []
    reference = fill_streaming(streamed, state, quantize_part=quantizer.quantize, token_ids=TOKENS,
                               on_part=parts.append)
    configs = quantizer.finish()

    assert torch.equal(reference, expected_reference)
    assert configs == expected_configs
    assert parts == ["tok_embeddings", *[f"layers.{i}" for i in range(arch.n_layers)], "output"]
    expected, got = _plain_tensors(whole), _plain_tensors(streamed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert (streamed.tok_embeddings.weight is streamed.output.weight) == (whole.tok_embeddings.weight
                                                                          is whole.output.weight)
    # The streamed model runs, and from a clean cache.
    torch.testing.assert_close(streamed(torch.tensor([TOKENS]), torch.tensor([0])),
                               whole(torch.tensor([TOKENS]), torch.tensor([0])))


def test_streaming_reports_a_missing_tensor(custom_ops):
    state = random_state_dict(UNTIED, seed=3)
    del state["layers.1.feed_forward.w2.weight"]
    with pytest.raises((KeyError, RuntimeError), match="layers.1.feed_forward.w2.weight"):
        fill_streaming(skeleton(UNTIED, 32), state, quantize_part=lambda prefix: None)


@pytest.mark.parametrize("shape,group,bits", [((96, 256), 32, 4), ((40, 64), 64, 8), ((700, 96), 32, 4)])
def test_blockwise_hqq_equals_torchaos(shape, group, bits, monkeypatch):
    from torchao.quantization.quant_primitives import (
        _choose_qparams_and_quantize_scale_only_hqq as torchaos,
    )

    from llama_mobile.quantize import rowwise

    monkeypatch.setattr(rowwise, "BLOCK_ELEMENTS", 2048)  # many blocks even for a small matrix
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.02
    expected_q, expected_scale = torchaos(weight, [1, group], qmin, qmax)
    q, scale = rowwise.hqq_scale_only(weight, [1, group], qmin, qmax)
    assert q.dtype == torch.int8 and torch.equal(q, expected_q.to(torch.int8))
    assert torch.equal(scale, expected_scale)


def test_blockwise_hqq_keeps_torchaos_global_early_stop(monkeypatch):
    """Rows already on the int grid converge at once, the rest do not: the stop is the whole matrix's."""
    from torchao.quantization.quant_primitives import (
        _choose_qparams_and_quantize_scale_only_hqq as torchaos,
    )

    from llama_mobile.quantize import rowwise

    monkeypatch.setattr(rowwise, "BLOCK_ELEMENTS", 512)
    generator = torch.Generator().manual_seed(2)
    on_grid = torch.randint(-8, 8, (64, 64), generator=generator).float() * 0.01
    for weight in (on_grid, torch.cat([on_grid, torch.randn(64, 64, generator=generator)])):
        expected_q, expected_scale = torchaos(weight, [1, 32], -8, 7)
        q, scale = rowwise.hqq_scale_only(weight, [1, 32], -8, 7)
        assert torch.equal(q, expected_q.to(torch.int8)) and torch.equal(scale, expected_scale)


def test_paged_out_checkpoint_reads_back_the_same(tmp_path):
    from llama_mobile.export.pages import release_pages

    path = tmp_path / "w.pth"
    torch.save({"a": torch.randn(300, 1000), "b": torch.arange(5000.0)}, path)
    loaded = torch.load(path, mmap=True, weights_only=True)
    before = {k: v.clone() for k, v in loaded.items()}
    release_pages(loaded.values())
    release_pages([torch.randn(3, 3)])  # anonymous memory: a no-op, never a loss
    for name, tensor in loaded.items():
        assert torch.equal(tensor, before[name])


@pytest.mark.parametrize("recipe_part", [("8da4w", "embedding"), ("8w", "linear"), ("8da8w", "linear")])
def test_rowwise_affine_equals_torchaos(recipe_part, monkeypatch):
    """Embeddings and affine linears quantized a few rows at a time: the same qdata, scales, zero points."""
    from torchao.quantization import quantize_

    from llama_mobile.quantize import rowwise
    from llama_mobile.quantize.apply import torchao_config

    monkeypatch.setattr(rowwise, "AFFINE_BLOCK_ELEMENTS", 1000)
    recipe_name, part = recipe_part
    quant = getattr(load_recipe(recipe_name), part)
    config = torchao_config(quant, embedding=part == "embedding")
    weight = torch.randn(203, 96, generator=torch.Generator().manual_seed(4))

    def quantized(rows: bool):
        module = (torch.nn.Embedding(203, 96) if part == "embedding" else torch.nn.Linear(96, 203, bias=False))
        module.weight.data.copy_(weight)
        with rowwise.rowwise_quantizers() if rows else contextlib.nullcontext():
            quantize_(module, config, filter_fn=lambda m, fqn: True)
        return module.weight

    expected, got = quantized(False), quantized(True)
    for field in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(expected, field), getattr(got, field)), field
