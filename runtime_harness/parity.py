"""Parity of an exported program against the float reference on the same tokens, and its gate."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.runtime_harness.metrics import ParityMetrics, compare_logits
from llama_mobile.runtime_harness.program import Program

CORPUS_DIR = Path(__file__).parent / "corpus"
CORPUS = CORPUS_DIR / "alice.txt"  # the parity text
PROMPTS = CORPUS_DIR / "prompts.jsonl"  # the greedy-generation check
GUARD_PROMPTS = CORPUS_DIR / "guard_prompts.jsonl"


def eval_token_ids(tokenizer, positions: int, text_path: Path | None = None,
                   bos_id: int | None = None) -> list[int]:
    text = (text_path or CORPUS).read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    if bos_id is not None:
        ids = [bos_id, *ids]
    return ids[:positions]


@torch.no_grad()
def reference_logits(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """Eager logits at every position in one forward pass over a fresh cache."""
    model.reset_cache()
    model.all_logits = True
    try:
        logits = model(torch.tensor([token_ids]), torch.tensor([0]))[0].float()
    finally:
        model.all_logits = False
        model.reset_cache()
    return logits


@dataclass
class GateResult:
    metrics: ParityMetrics
    thresholds: dict
    failures: list[str] = field(default_factory=list)
    reference: str = "fp32 eager"

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reference": self.reference, "metrics": self.metrics.to_dict(),
                "thresholds": self.thresholds, "failures": self.failures}

    def summary(self) -> str:
        m = self.metrics
        verdict = "PASS" if self.passed else "FAIL"
        return (f"parity {verdict} vs {self.reference} over {m.positions} positions: "
                f"top-1 {m.top1_agreement:.1%}, cosine {m.cosine_mean:.4f}, KL {m.kl_mean:.4f}, "
                f"ppl ratio {m.ppl_ratio:.3f}")


def gate(metrics: ParityMetrics, thresholds: dict, reference: str = "fp32 eager") -> GateResult:
    """Each failing metric is named with its value, its limit and the distance between them."""
    failures = []
    checks = (("top1_agreement", "min_top1", min), ("cosine_mean", "min_cosine", min),
              ("ppl_ratio", "max_ppl_ratio", max), ("kl_mean", "max_kl_mean", max))
    for metric, key, kind in checks:
        if key not in thresholds or not hasattr(metrics, metric):
            continue
        value, limit = getattr(metrics, metric), thresholds[key]
        if (kind is min and value < limit) or (kind is max and value > limit):
            failures.append(f"{metric} {value:.4f} {'<' if kind is min else '>'} {limit:.4f} "
                            f"(off by {abs(value - limit):.4f})")
    return GateResult(metrics=metrics, thresholds=dict(thresholds), failures=failures, reference=reference)


def program_parity(pte_path: Path, token_ids: list[int], reference: torch.Tensor) -> ParityMetrics:

    candidate = Program(pte_path).logits_per_position(token_ids)
    return compare_logits(reference, candidate, token_ids)
