"""Calibrated 4-bit weights: deterministic, closer to the float model on text they never saw, still plain
int4 g32 + one scale per group that lowers entirely into XNNPACK, and recipe errors stay one line."""
import dataclasses
import hashlib
import json

import pytest
import torch

from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.export.model import build_model, skeleton
from llama_mobile.export.stream_build import fill_streaming
from llama_mobile.quantize.apply import PartQuantizer
from llama_mobile.quantize.calibrate import Calibrator, calibration_windows, gptq_quantize, imatrix_quantize
from llama_mobile.quantize.recipe import Calibration, load_recipe, parse_recipe
from llama_mobile.runtime_harness.metrics import compare_logits
from llama_mobile.runtime_harness.parity import reference_logits
from tests.checkpoints import TINY, random_state_dict, write_hf
from tests.conftest import export_tiny

# Wide enough for groups of 32 to matter; a few input channels 10x louder, as in real checkpoints'
# residual streams, so that which channels matter is something calibration can learn.
WIDE = dataclasses.replace(TINY, dim=128, ffn_hidden=256)
CONTEXT = 128


def _state(seed: int = 5) -> dict[str, torch.Tensor]:
    state = random_state_dict(WIDE, seed=seed)
    loud = torch.zeros(WIDE.dim)
    loud[torch.randperm(WIDE.dim, generator=torch.Generator().manual_seed(seed))[:6]] = 1.0
    for name in state:
        if name.endswith("norm.weight"):
            state[name] = state[name] * (1 + 9 * loud)
    return state


def _tokens(seed: int, count: int) -> list[int]:
    return torch.randint(3, WIDE.vocab_size, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def _quantized(state, recipe, calibration_ids=None):
    model = skeleton(WIDE, CONTEXT)
    calibrator = Calibrator.create(recipe.calibration) if recipe.calibration else None
    quantizer = PartQuantizer(model, recipe, tied=False, calibrator=calibrator)
    fill_streaming(model, dict(state), quantize_part=quantizer.quantize, calibration_ids=calibration_ids,
                   observe=quantizer.observe)
    quantizer.finish()
    return model, quantizer


@pytest.mark.parametrize("method", ["gptq", "imatrix"])
def test_calibration_lowers_kl_on_held_out_tokens(custom_ops, method):
    state = _state()
    float_model = build_model(WIDE, CONTEXT, dict(state))
    held_out = _tokens(seed=99, count=96)
    reference = reference_logits(float_model, held_out)
    plain = load_recipe("8da4w")
    calibrated = dataclasses.replace(plain, calibration=Calibration(method=method, tokens=384, sequence=96))
    windows = calibration_windows(_tokens(seed=1, count=400), calibrated.calibration, CONTEXT, bos_id=None)
    base_model, _ = _quantized(state, plain)
    cal_model, quantizer = _quantized(state, calibrated, windows)
    assert len(quantizer.calibrated) == 7 * WIDE.n_layers  # every int4 linear of every block
    base = compare_logits(reference, reference_logits(base_model, held_out), held_out)
    cal = compare_logits(reference, reference_logits(cal_model, held_out), held_out)
    assert cal.kl_mean < 0.85 * base.kl_mean, (method, base.kl_mean, cal.kl_mean)


def test_calibrated_weights_are_int4_groups_torchao_stores_exactly(custom_ops):
    state = _state()
    recipe = dataclasses.replace(load_recipe("8da4w"), calibration=Calibration(method="gptq", tokens=256,
                                                                               sequence=64))
    windows = calibration_windows(_tokens(seed=1, count=300), recipe.calibration, CONTEXT, bos_id=None)
    model, _ = _quantized(state, recipe, windows)
    weight = model.layers[0].feed_forward.w2.weight
    assert type(weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert weight.qdata.dtype == torch.int8 and int(weight.qdata.min()) >= -8 and int(weight.qdata.max()) <= 7
    assert weight.scale.shape == (WIDE.dim, WIDE.ffn_hidden // 32) and not weight.zero_point.any()
    assert weight.activation_quantization == "int8_asym_per_token"


def test_gptq_beats_rounding_on_its_own_objective():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=generator) * torch.linspace(0.1, 3.0, 64)
    w = torch.randn(48, 64, generator=generator)
    h = 2 * x.t() @ x / x.shape[0]

    def output_error(q, s):
        return ((x @ (w - q.float() * s.repeat_interleave(32, dim=1)).t()) ** 2).mean().item()

    absmax = w.reshape(48, 2, 32).abs().amax(-1) / 8
    rtn = (w / absmax.repeat_interleave(32, dim=1)).round().clamp(-8, 7)
    assert output_error(*gptq_quantize(w, h, 32, -8, 7)) < output_error(*imatrix_quantize(w, h, 32, -8, 7)) \
        < output_error(rtn, absmax)


def test_windows_are_fixed_by_the_seed():
    ids = list(range(1000))
    calibration = Calibration(tokens=256, sequence=64, seed=3)
    first = calibration_windows(ids, calibration, 512, bos_id=7)
    assert first == calibration_windows(ids, calibration, 512, bos_id=7)
    assert len(first) == 4 and all(len(w) == 64 and w[0] == 7 for w in first)
    assert first != calibration_windows(ids, dataclasses.replace(calibration, seed=4), 512, bos_id=7)


@pytest.fixture(scope="module")
def calibrated_bundles(tmp_path_factory, custom_ops):
    checkpoint = write_hf(tmp_path_factory.mktemp("ckpt") / "hf", WIDE, _state())
    text = tmp_path_factory.mktemp("text") / "calibration.txt"
    text.write_text("Holmes looked at the note and said nothing for a while. " * 60, encoding="utf-8")
    recipe = tmp_path_factory.mktemp("recipe") / "tiny-cal.toml"
    recipe.write_text('name = "tiny-cal"\n[linear]\nscheme = "8da4w"\ngroup_size = 32\nalgorithm = "hqq"\n'
                      '[embedding]\nscheme = "8w"\n[calibration]\nmethod = "gptq"\ntokens = 128\nsequence = 64\n'
                      '[thresholds]\nmin_top1 = 0\nmin_cosine = 0\nmax_ppl_ratio = 100\nmax_kl_mean = 100\n')
    return [export_tiny(checkpoint, tmp_path_factory.mktemp("out"), str(recipe), calibration=text)
            for _ in range(2)], text


def test_calibrated_export_is_deterministic_and_recorded(calibrated_bundles):
    (first, second), text = calibrated_bundles
    for name in ("model.pte", "model.ptd"):
        if (first.bundle / name).exists():
            assert (first.bundle / name).read_bytes() == (second.bundle / name).read_bytes(), name
    recorded = json.loads((first.bundle / "manifest.json").read_text())["recipe"]["calibration"]
    assert recorded["method"] == "gptq" and recorded["tokens"] == 128 and recorded["seed"] == 0
    assert recorded["text_sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()
    assert recorded["calibrated_layers"] == 7 * WIDE.n_layers


def test_calibrated_program_lowers_fully_into_xnnpack(calibrated_bundles):
    (first, _), _ = calibrated_bundles
    runtime = first.manifest.runtime
    linear_ops = {op for op in runtime.ops_outside_delegates if "linear" in op or "mm" in op}
    assert not linear_ops, runtime.ops_outside_delegates
    assert runtime.delegated_calls >= 1


def _recipe(calibration: str) -> dict:
    return {"name": "x", "linear": {"scheme": "8da4w", "group_size": 32}, "calibration": calibration}


@pytest.mark.parametrize("section, message", [
    ({"method": "awq"}, "method 'awq' is not one of gptq, imatrix"),
    ({"tokens": 0}, "tokens must be an integer in 16..65536"),
    ({"seed": -1}, "seed must be an integer"),
    ({"damp": 0}, "damp must be a number in (0, 1]"),
    ({"rounds": 2}, "unknown key 'rounds'"),
    ("gptq", "[calibration] must be a table"),
])
def test_recipe_errors_are_one_line(section, message):
    with pytest.raises(ConfigError) as error:
        parse_recipe(_recipe(section), "x.toml")
    assert message in str(error.value) and "\n" not in str(error.value).strip()


def test_calibration_needs_grouped_symmetric_linears():
    with pytest.raises(ConfigError, match="needs symmetric grouped linears"):
        parse_recipe({"name": "x", "linear": {"scheme": "8da8w"}, "calibration": {}}, "x.toml")


def test_calibration_file_needs_a_calibrated_recipe(tiny_hf, tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("words " * 100)
    with pytest.raises(UsageError, match=r"--calibration needs a recipe with a \[calibration\] section"):
        export_tiny(tiny_hf, tmp_path / "out", "8da4w", calibration=text)
