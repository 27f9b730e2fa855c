import pytest
import torch

from llama_mobile.core.presets import LLAMA3_ROPE
from llama_mobile.export.model import (
    apply_rope,
    build_model,
    rope_frequencies,
    rope_tables,
)
from tests.checkpoints import TINY, random_state_dict


def meta_reference_rope(x, freqs):
    """Meta's llama_models apply_rotary_emb: pairs (2i, 2i+1) as complex numbers."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotation = torch.polar(torch.ones_like(freqs), freqs)[None, :, None, :]
    return torch.view_as_real(pairs * rotation).flatten(3)


def test_rope_matches_metas_complex_formulation():
    arch = TINY
    x = torch.randn(1, 7, arch.n_heads, arch.head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin, swap = rope_tables(arch, 16)
    positions = torch.arange(3, 10, dtype=torch.float32)
    freqs = torch.outer(positions, rope_frequencies(arch.head_dim, arch.rope_theta, None))
    expected = meta_reference_rope(x, freqs)
    got = apply_rope(x, cos[3:10], sin[3:10], swap)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_llama3_rope_scaling_matches_meta():
    # llama_models/llama3/model.py apply_scaling, evaluated by hand at three wavelengths.
    freqs = rope_frequencies(64, 500000.0, LLAMA3_ROPE)
    base = rope_frequencies(64, 500000.0, None)
    assert torch.allclose(freqs[0], base[0])  # short wavelengths stay
    assert torch.allclose(freqs[-1], base[-1] / 32)  # long wavelengths divided by the factor
    assert (freqs <= base + 1e-12).all()


def test_incremental_decode_equals_full_forward(custom_ops):
    model = build_model(TINY, 32, random_state_dict(TINY, seed=3))
    tokens = torch.randint(0, TINY.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    model.all_logits = True
    full = model(tokens, torch.tensor([0]))[0]
    model.all_logits = False
    model.reset_cache()
    steps = torch.stack([model(tokens[:, i:i + 1], torch.tensor([i]))[0] for i in range(12)])
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    # a chunked prefill (8 tokens, then 4) lands on the same last logits
    model.reset_cache()
    model(tokens[:, :8], torch.tensor([0]))
    torch.testing.assert_close(model(tokens[:, 8:], torch.tensor([8]))[0], full[-1], rtol=1e-4, atol=1e-4)


def test_standard_attention_matches_custom_ops_on_prefill_and_decode():
    """The sdpa kernel (for Core ML, QNN, Vulkan) computes what ExecuTorch's custom ops compute."""
    from llama_mobile.export.model import build_model, load_custom_ops
    from tests.checkpoints import TINY, random_state_dict

    load_custom_ops()
    state = random_state_dict(TINY, seed=3)
    custom = build_model(TINY, 32, dict(state))
    standard = build_model(TINY, 32, dict(state), attention_kernel="sdpa")
    tokens = torch.tensor([[5, 17, 42, 9, 100]])
    for model in (custom, standard):
        model.all_logits = True
    prefill = [m(tokens, torch.tensor([0])) for m in (custom, standard)]
    torch.testing.assert_close(prefill[1], prefill[0], atol=1e-4, rtol=1e-4)
    step = [m(torch.tensor([[7]]), torch.tensor([5])) for m in (custom, standard)]
    torch.testing.assert_close(step[1], step[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(step[0], prefill[0][:, -1:]), "decode must see the cache, not repeat prefill"


def test_build_model_rejects_unknown_attention_kernel():
    from llama_mobile.export.model import build_model
    from tests.checkpoints import TINY, random_state_dict

    with pytest.raises(ValueError, match="attention_kernel"):
        build_model(TINY, 16, random_state_dict(TINY), attention_kernel="flash")
