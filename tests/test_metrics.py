import math

import pytest
import torch

from llama_mobile.runtime_harness.metrics import (
    compare_logits,
    kl_per_position,
    perplexity,
    pool_metrics,
)
from llama_mobile.runtime_harness.parity import gate


def test_identical_logits_are_perfect():
    logits = torch.randn(10, 50, generator=torch.Generator().manual_seed(0))
    m = compare_logits(logits, logits.clone(), list(range(10)))
    assert m.top1_agreement == 1.0 and m.top5_overlap == 1.0
    assert m.kl_mean == pytest.approx(0.0, abs=1e-12)
    assert m.ppl_ratio == pytest.approx(1.0)
    assert m.cosine_min == pytest.approx(1.0)


def test_kl_matches_direct_computation():
    p = torch.tensor([[2.0, 0.0, -1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    pp, qq = torch.softmax(p, -1)[0], torch.softmax(q, -1)[0]
    expected = sum(float(pp[i] * math.log(pp[i] / qq[i])) for i in range(3))
    assert kl_per_position(p, q).item() == pytest.approx(expected, rel=1e-6)


def test_perplexity_of_uniform_is_vocab_size():
    assert perplexity(torch.zeros(5, 7), torch.tensor([1, 2, 3, 4, 5])) == pytest.approx(7.0)


def test_pooled_windows_score_as_one_text_would():
    """Two windows pooled give the means over all their positions and the perplexity of all their next
    tokens together, exactly what one computation over both gives."""
    gen = torch.Generator().manual_seed(3)
    ref, cand = torch.randn(2, 9, 40, generator=gen), torch.randn(2, 9, 40, generator=gen)
    ids = torch.randint(0, 40, (2, 9), generator=gen).tolist()
    parts = [compare_logits(ref[i], cand[i], ids[i]) for i in range(2)]
    pooled = pool_metrics(parts)
    assert pooled.positions == 18
    assert pooled.top1_agreement == pytest.approx(sum(p.top1_agreement for p in parts) / 2)
    assert pooled.kl_mean == pytest.approx(kl_per_position(ref.reshape(18, 40), cand.reshape(18, 40)).mean().item())
    nexts = torch.tensor([ids[0][1:], ids[1][1:]]).reshape(-1)
    assert pooled.ppl_reference == pytest.approx(perplexity(ref[:, :-1].reshape(16, 40), nexts))
    assert pooled.ppl_ratio == pytest.approx(perplexity(cand[:, :-1].reshape(16, 40), nexts) / pooled.ppl_reference)
    assert pooled.cosine_min == min(p.cosine_min for p in parts)
    assert pool_metrics(parts[:1]) == parts[0]
    with pytest.raises(ValueError):
        pool_metrics([])


def test_top1_counts_disagreements():
    ref = torch.eye(4) * 5
    cand = ref.clone()
    cand[0] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # position 0 now prefers token 1
    m = compare_logits(ref, cand, [0, 1, 2, 3])
    assert m.top1_agreement == pytest.approx(0.75)


def test_gate_names_each_failing_metric_and_distance():
    ref = torch.randn(20, 30, generator=torch.Generator().manual_seed(1))
    noisy = ref + 3 * torch.randn(20, 30, generator=torch.Generator().manual_seed(2))
    m = compare_logits(ref, noisy, list(range(20)))
    result = gate(m, {"min_top1": 0.99, "min_cosine": 0.999, "max_ppl_ratio": 1e6})
    assert not result.passed
    assert any(f.startswith("top1_agreement") and "off by" in f for f in result.failures)
    assert any(f.startswith("cosine_mean") for f in result.failures)
    assert not any(f.startswith("ppl_ratio") for f in result.failures)
    assert gate(compare_logits(ref, ref, list(range(20))), {"min_top1": 0.99}).passed
