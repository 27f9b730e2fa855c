"""The int8 KV cache (issue 23): ExecuTorch's quantized cache and SDPA, as a recipe option."""
import json

import pytest
import torch

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.export.model import build_model
from llama_mobile.jobs.plan import kv_cache_bytes
from llama_mobile.quantize.recipe import load_recipe, parse_recipe
from tests.checkpoints import TINY
from tests.conftest import export_tiny


def _logits(model, tokens: list[int]) -> torch.Tensor:
    """Prefill all but the last token, then decode the last: both paths of the cache."""
    model.reset_cache()
    model(torch.tensor([tokens[:-1]]), torch.tensor([0]))
    return model(torch.tensor([tokens[-1:]]), torch.tensor([len(tokens) - 1]))[0]


def test_int8_cache_is_close_to_float_and_not_the_same(custom_ops, tiny_state):
    tokens = [(7 * i + 3) % TINY.vocab_size for i in range(40)]
    model = build_model(TINY, 64, dict(tiny_state))
    reference = _logits(model, tokens)
    model.use_int8_kv_cache()
    assert model.layers[0].attention.k_cache.dtype == torch.int8
    quantized = _logits(model, tokens)
    cosine = torch.nn.functional.cosine_similarity(reference, quantized, dim=0)
    assert cosine > 0.999, cosine
    assert not torch.equal(reference, quantized)  # the cache really is quantized


def test_int8_cache_program_matches_eager(custom_ops, tiny_hf, tiny_state, tmp_path):
    result = export_tiny(tiny_hf, tmp_path, "fp32", kv_cache="int8")
    bundle = verify_bundle(result.bundle)
    assert bundle.path.name.endswith("-kv8-xnnpack")
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["recipe"]["kv_cache"] == "int8"
    assert result.parity is not None and result.parity["passed"]

    from llama_mobile.runtime_harness.program import Program

    program = Program.of(bundle)
    tokens = [(5 * i + 1) % TINY.vocab_size for i in range(20)]
    program.forward(torch.tensor([tokens[:-1]]), 0)
    ours = program.forward(torch.tensor([tokens[-1:]]), len(tokens) - 1)[0]
    model = build_model(TINY, 64, {k: v.to(torch.bfloat16).float() for k, v in tiny_state.items()})
    model.use_int8_kv_cache()
    eager = _logits(model, tokens)
    assert torch.allclose(ours, eager, atol=1e-3, rtol=1e-3), (ours - eager).abs().max()


def test_default_recipes_keep_the_float_cache():
    recipe = load_recipe("8da4w-mixed-gptq")
    assert recipe.kv_cache == "fp32" and "kv_cache" not in recipe.to_dict()


def test_bad_kv_cache_is_a_recipe_error():
    with pytest.raises(ConfigError, match="kv_cache 'int4' is not one of fp32, int8"):
        parse_recipe({"name": "x", "kv_cache": "int4"}, "x.toml")


@pytest.mark.parametrize("target, recipe, message", [
    ("coreml-ios18", "coreml-fp16", "an int8 KV cache needs ExecuTorch's custom quantized SDPA"),
    ("xnnpack", "fp16", "an int8 KV cache is attended in float32"),
])
def test_int8_cache_refused_where_it_cannot_run(tiny_hf, tmp_path, target, recipe, message):
    from llama_mobile.jobs.export_job import ExportRequest, run_export

    request = ExportRequest(model="llama", checkpoint=tiny_hf, recipe=recipe, target=target, output_dir=tmp_path,
                            kv_cache="int8")
    with pytest.raises(UsageError, match=message):
        run_export(request)
    assert not any(tmp_path.iterdir())


def test_plan_prices_the_cache_the_model_holds(custom_ops, tiny_state):
    """plan's KV figure is the bytes of the cache buffers the program really has, float and int8."""
    model = build_model(TINY, 64, dict(tiny_state))

    def cache_bytes() -> int:
        return sum(buffer.numel() * buffer.element_size() for name, buffer in model.named_buffers()
                   if "_cache" in name)

    assert cache_bytes() == kv_cache_bytes(TINY, 64)
    model.use_int8_kv_cache()
    assert cache_bytes() == kv_cache_bytes(TINY, 64, "int8") < kv_cache_bytes(TINY, 64) / 3
