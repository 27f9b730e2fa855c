"""Function-preserving rotations (export/rotation.py, recipe [rotation]): the rotated float model computes the
original's logits, tied embeddings stay one matrix, a rotated 8da4w export lowers as the unrotated one does,
and the same seed gives the same bytes."""
import dataclasses

import pytest
import torch

from llama_mobile.core.errors import ConfigError
from llama_mobile.export.model import build_model, skeleton
from llama_mobile.export.rotation import Rotation, hadamard_sizes_supported, random_hadamard
from llama_mobile.export.stream_build import fill_streaming
from llama_mobile.jobs.export_job import rotation_for
from llama_mobile.quantize.apply import PartQuantizer
from llama_mobile.quantize.recipe import load_recipe, parse_recipe
from llama_mobile.runtime_harness.parity import reference_logits
from tests.checkpoints import TINY, random_state_dict, write_hf
from tests.conftest import export_tiny

# Widths that are not powers of two (as SmolLM2's 576 = 36 x 16): dim 96 = 12 x 8, head_dim 24 = 12 x 2.
ODD_TIED = dataclasses.replace(TINY, dim=96, ffn_hidden=192, tied_embeddings=True)
ODD_UNTIED = dataclasses.replace(ODD_TIED, tied_embeddings=False)
POW2_TIED = dataclasses.replace(TINY, tied_embeddings=True)
TOKENS = [1, 5, 9, 200, 17, 3, 44, 101, 7, 250, 12, 60]


def _rotated_float(arch, rotation, rms_norm="mean_square", seed=3):
    state = random_state_dict(arch, seed=seed)
    model = skeleton(arch, 32, rms_norm=rms_norm, output_mix=rotation.mixes_output(arch.tied_embeddings))
    streamed = fill_streaming(model, state, quantize_part=lambda prefix: None, token_ids=TOKENS, rotation=rotation)
    return model, streamed, build_model(arch, 32, dict(state), rms_norm=rms_norm)


@pytest.mark.parametrize("size", [24, 64, 96, 576, 1536])
def test_hadamard_matrices_are_orthogonal_and_seeded(size):
    r = random_hadamard(size, seed=0)
    torch.testing.assert_close(r @ r.T, torch.eye(size, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(r, random_hadamard(size, seed=0))
    assert not torch.equal(r, random_hadamard(size, seed=1))


@pytest.mark.parametrize("arch", [ODD_TIED, ODD_UNTIED, POW2_TIED], ids=["odd-tied", "odd-untied", "pow2-tied"])
@pytest.mark.parametrize("which", [(True, True), (True, False), (False, True)], ids=["r1r2", "r1", "r2"])
def test_rotated_float_model_computes_the_same_logits(custom_ops, arch, which):
    rotation = Rotation.hadamard(arch, seed=0, r1=which[0], r2=which[1])
    model, streamed, original = _rotated_float(arch, rotation)
    expected = reference_logits(original, TOKENS)
    torch.testing.assert_close(streamed, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(reference_logits(model, TOKENS), expected, atol=2e-5, rtol=1e-4)
    if which[0]:  # the norms are a plain x / rms(x): their scales went into the linears
        assert all(torch.equal(layer.attention_norm.weight, torch.ones(arch.dim)) for layer in model.layers)
        assert not torch.equal(model.layers[0].attention.wq.weight, original.layers[0].attention.wq.weight)
    if arch.tied_embeddings:  # still one matrix for the lookup and the output layer
        assert model.output.weight is model.tok_embeddings.weight
        assert (model.output_mix is not None) == which[0]


def test_rotation_that_keeps_outlier_channels_is_exact_too(custom_ops):
    """Channels left out of R1 keep their norm scales (the rest share one constant, which commutes with R1)."""
    arch = ODD_TIED
    keep = torch.zeros(arch.dim, dtype=torch.bool)
    keep[:32] = True
    r1 = torch.eye(arch.dim, dtype=torch.float64)
    r1[32:, 32:] = random_hadamard(arch.dim - 32, seed=0)
    rotation = Rotation(r1=r1, r2=random_hadamard(arch.head_dim, 1), n_kv_heads=arch.n_kv_heads,
                        n_heads=arch.n_heads, keep=keep)
    _, streamed, original = _rotated_float(arch, rotation)
    torch.testing.assert_close(streamed, reference_logits(original, TOKENS), atol=2e-5, rtol=1e-4)


def test_l2_norm_stays_exact_under_rotation(custom_ops):
    """The fp16 recipes' L2-form RMSNorm is rotation-invariant as well (||x R|| = ||x||)."""
    rotation = Rotation.hadamard(ODD_TIED, seed=0)
    _, streamed, original = _rotated_float(ODD_TIED, rotation, rms_norm="l2")
    torch.testing.assert_close(streamed, reference_logits(original, TOKENS), atol=2e-5, rtol=1e-4)


def test_skeleton_must_match_the_rotation(custom_ops):
    state = random_state_dict(ODD_TIED, seed=3)
    with pytest.raises(ValueError, match="output_mix"):
        fill_streaming(skeleton(ODD_TIED, 32), state, quantize_part=lambda p: None,
                       rotation=Rotation.hadamard(ODD_TIED))


def _quantized_rotated(arch, recipe):
    model = skeleton(arch, 32, output_mix=arch.tied_embeddings)
    quantizer = PartQuantizer(model, recipe, tied=arch.tied_embeddings)
    fill_streaming(model, random_state_dict(arch, seed=3), quantize_part=quantizer.quantize,
                   rotation=rotation_for(recipe, arch))
    return model, quantizer.finish()


def test_rotated_quantization_is_deterministic_and_stores_tied_weights_once(custom_ops):
    recipe = load_recipe("8da4w-mixed-rot")
    first, configs = _quantized_rotated(ODD_TIED, recipe)
    second, _ = _quantized_rotated(ODD_TIED, recipe)
    assert first.tok_embeddings.weight is first.output.weight  # quantized once, read by lookup and matmul
    assert configs["embedding:tok_embeddings"] == {"shared_with": "output"}
    # output_mix is quantized as the output layer (8da8w per channel), not as the int4 linears
    assert first.output_mix.weight.qdata.shape == (ODD_TIED.dim, ODD_TIED.dim)
    assert first.output_mix.weight.scale.numel() == ODD_TIED.dim
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if hasattr(x, "qdata"):
            assert torch.equal(x.qdata, y.qdata) and torch.equal(x.scale, y.scale), name
        else:
            assert torch.equal(x, y), name


def test_recipe_rotation_section_is_parsed_and_recorded():
    recipe = load_recipe("8da4w-mixed-rot")
    assert recipe.rotation is not None and recipe.rotation.kind == "hadamard" and recipe.rotation.seed == 0
    assert recipe.to_dict()["rotation"] == {"kind": "hadamard", "seed": 0, "r1": True, "r2": True,
                                            "online_down_proj": False}
    assert "rotation" not in load_recipe("8da4w-mixed").to_dict()  # unrotated manifests unchanged
    base = {"name": "r", "linear": {"scheme": "8da4w", "group_size": 32}}
    with pytest.raises(ConfigError) as error:
        parse_recipe({**base, "rotation": {"kind": "random", "seed": -1, "r3": True, "online_down_proj": True}},
                     "r.toml")
    text = str(error.value)
    for expected in ("kind 'random'", "seed must be", "unknown key 'r3'", "online_down_proj"):
        assert expected in text, text
    with pytest.raises(ConfigError, match="needs r1 or r2"):
        parse_recipe({**base, "rotation": {"r1": False, "r2": False}}, "r.toml")


def test_widths_without_a_hadamard_matrix_are_refused():
    arch = dataclasses.replace(TINY, dim=200, n_heads=4, ffn_hidden=256)  # 200 = 40 x 5, head_dim 50
    assert hadamard_sizes_supported(arch) == ["dim 200", "head_dim 50"]
    with pytest.raises(ConfigError, match="no Hadamard matrix"):
        rotation_for(load_recipe("8da4w-mixed-rot"), arch)
    assert hadamard_sizes_supported(ODD_TIED) == []


@pytest.fixture(scope="module")
def odd_tied_hf(tmp_path_factory):
    return write_hf(tmp_path_factory.mktemp("odd") / "hf", ODD_TIED, random_state_dict(ODD_TIED, seed=5))


def test_rotated_export_lowers_like_the_unrotated_one(odd_tied_hf, tmp_path):
    plain = export_tiny(odd_tied_hf, tmp_path / "plain", "8da4w-mixed")
    rotated = export_tiny(odd_tied_hf, tmp_path / "rot", "8da4w-mixed-rot")
    p, r = plain.manifest.runtime, rotated.manifest.runtime
    assert r.ops_outside_delegates == p.ops_outside_delegates  # every linear, output_mix too, in XNNPACK
    assert r.delegated_calls == p.delegated_calls
    assert r.ops_in_delegates > p.ops_in_delegates  # the output_mix linear
    assert rotated.manifest.recipe["rotation"]["kind"] == "hadamard"
    assert rotated.manifest.runtime.weights == "model.ptd"  # the tied matrix is still stored once
    assert rotated.parity["passed"], rotated.parity
