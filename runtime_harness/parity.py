"""Parity of an exported program against the float reference on the same tokens, and its gate."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.core.errors import UsageError
from llama_mobile.export.config_fields import read_user_text
from llama_mobile.runtime_harness.metrics import ParityMetrics, compare_logits
from llama_mobile.runtime_harness.program import Program

CORPUS_DIR = Path(__file__).parent / "corpus"
CORPUS = CORPUS_DIR / "alice.txt"  # the parity text
PROMPTS = CORPUS_DIR / "prompts.jsonl"  # the greedy-generation check
GUARD_PROMPTS = CORPUS_DIR / "guard_prompts.jsonl"


# A gate measured over fewer positions than this says nothing (`validate --positions` has the same minimum);
# a shorter request (a context under 8) needs all the positions it asked for.
MIN_GATE_POSITIONS = 8


def eval_token_ids(tokenizer, positions: int, text_path: Path | None = None,
                   bos_id: int | None = None) -> list[int]:
    """The first `positions` tokens of the text; a text too short for the gate is an error, never a pass."""
    text = read_user_text(text_path, what="evaluation text") if text_path is not None else \
        CORPUS.read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    if bos_id is not None:
        ids = [bos_id, *ids]
    needed = max(2, min(positions, MIN_GATE_POSITIONS))
    if len(ids) < needed:
        raise UsageError(f"the evaluation text gives {len(ids)} token positions; the parity gate needs at least "
                         f"{needed}", path=text_path or CORPUS, fix="pass a longer --text")
    return ids[:positions]


def text_windows(tokenizer, positions: int, text_path: Path | None = None, bos_id: int | None = None) -> list[list[int]]:
    """The whole text as consecutive windows of `positions` token positions, each opening with BOS (when
    the model has one) like a fresh prompt; the tail shorter than a window is left out. A text shorter than
    one window gives the one window ``eval_token_ids`` gives."""
    text = read_user_text(text_path, what="evaluation text") if text_path is not None else \
        CORPUS.read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    step = positions - (bos_id is not None)
    windows = [[*([bos_id] if bos_id is not None else []), *ids[start:start + step]]
               for start in range(0, len(ids) - step + 1, step)]
    return windows or [eval_token_ids(tokenizer, positions, text_path, bos_id)]


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


def check_thresholds(thresholds: dict) -> None:
    """A NaN limit can never be crossed: every threshold is a finite number."""
    for key, limit in thresholds.items():
        if not (isinstance(limit, (int, float)) and not isinstance(limit, bool) and math.isfinite(limit)):
            raise UsageError(f"threshold {key} = {limit!r} is not a finite number", fix=f"give --{key.replace('_', '-')} "
                             "a finite number")


def gate(metrics: ParityMetrics, thresholds: dict, reference: str = "fp32 eager") -> GateResult:
    """Each failing metric is named with its value, its limit and the distance between them."""
    check_thresholds(thresholds)
    failures = []
    checks = (("top1_agreement", "min_top1", min), ("cosine_mean", "min_cosine", min),
              ("ppl_ratio", "max_ppl_ratio", max), ("kl_mean", "max_kl_mean", max))
    for metric, key, kind in checks:
        if key not in thresholds or not hasattr(metrics, metric):
            continue
        value, limit = getattr(metrics, metric), thresholds[key]
        if not math.isfinite(value):  # NaN compares false both ways: it must fail, not pass
            failures.append(f"{metric} is {value} (the candidate's logits are not finite)")
        elif (kind is min and value < limit) or (kind is max and value > limit):
            failures.append(f"{metric} {value:.4f} {'<' if kind is min else '>'} {limit:.4f} "
                            f"(off by {abs(value - limit):.4f})")
    return GateResult(metrics=metrics, thresholds=dict(thresholds), failures=failures, reference=reference)


def program_parity(pte_path: Path, token_ids: list[int], reference: torch.Tensor,
                   weights: Path | None = None) -> ParityMetrics:
    candidate = Program(pte_path, weights, trusted=True).logits_per_position(token_ids)  # written by this run
    return compare_logits(reference, candidate, token_ids)
