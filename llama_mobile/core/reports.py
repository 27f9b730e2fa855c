"""What the validate and bench jobs return: typed results the CLI prints and `--json` writes (``to_dict``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

OURS = "executorch"  # the report key of our side in a bench
PEER = "llama.cpp"


@dataclass
class GenerationMatch:
    """Greedy generation of the program against the eager reference, prompt by prompt."""

    prompts: int
    tokens: int
    match_lengths: list[int]

    @property
    def mean_match(self) -> float:
        return sum(self.match_lengths) / max(len(self.match_lengths), 1)

    @property
    def exact(self) -> int:
        return sum(m == self.tokens for m in self.match_lengths)

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "tokens": self.tokens, "match_lengths": self.match_lengths,
                "mean_match": self.mean_match, "exact": self.exact}


@dataclass
class GuardAgreement:
    """Guard verdicts of the program against the eager reference on the same conversations."""

    reference: list[dict]
    candidate: list[dict]

    @property
    def conversations(self) -> int:
        return len(self.reference)

    @property
    def verdict_agreement(self) -> float:
        same = [r["verdict"] == c["verdict"] for r, c in zip(self.reference, self.candidate)]
        return sum(same) / max(len(self.reference), 1)

    @property
    def category_agreement(self) -> float:
        same = [r["verdict"] == c["verdict"] and r["categories"] == c["categories"]
                for r, c in zip(self.reference, self.candidate)]
        return sum(same) / max(len(self.reference), 1)

    @property
    def p_unsafe_max_difference(self) -> float:
        return max((abs(r["p_unsafe"] - c["p_unsafe"]) for r, c in zip(self.reference, self.candidate)),
                   default=0.0)

    def to_dict(self) -> dict:
        return {"conversations": self.conversations, "verdict_agreement": self.verdict_agreement,
                "category_agreement": self.category_agreement,
                "p_unsafe_max_difference": self.p_unsafe_max_difference,
                "reference": self.reference, "candidate": self.candidate}


@dataclass
class ValidationReport:
    bundle: str
    gate_on: str  # the reference the thresholds apply to
    thresholds: dict[str, float]
    references: dict[str, dict]  # reference name -> the gate's result (passed, metrics, failures)
    generation: GenerationMatch
    guard: GuardAgreement | None = None

    @property
    def gated(self) -> dict:
        return self.references[self.gate_on]

    @property
    def passed(self) -> bool:
        return self.gated["passed"]

    @property
    def failures(self) -> list[str]:
        return self.gated["failures"]

    def fail(self, failure: str) -> None:
        self.gated["failures"].append(failure)
        self.gated["passed"] = False

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "passed": self.passed, "gate_on": self.gate_on,
                "thresholds": self.thresholds, "references": self.references,
                "generation": self.generation.to_dict(),
                **({"guard": self.guard.to_dict()} if self.guard is not None else {})}


@dataclass
class QualityScore:
    """One artifact against the FP32 reference on one text."""

    top1_agreement: float
    kl_mean: float
    ppl_ratio: float
    cosine_mean: float


@dataclass
class QualityRow:
    artifact: str  # "executorch" or "llama.cpp <TYPE>[+imatrix]"
    side: str  # OURS or PEER
    size_bytes: int  # what the app (or llama.cpp) loads
    scores: dict[str, QualityScore]  # text name -> score
    gguf_type: str | None = None
    imatrix: bool = False
    path: str | None = None


@dataclass
class BenchQuality:
    """`bench --quality`: our program and every llama.cpp peer against the same FP32 eager reference, on
    the same tokens of each text."""

    reference: str  # "fp32 eager" (the bundle's source checkpoint)
    texts: dict[str, str]  # text name -> path
    positions: dict[str, int]  # text name -> positions scored
    rows: list[QualityRow]
    windows: dict[str, int] = field(default_factory=dict)  # text name -> windows pooled (--whole-text)
    imatrix_text: str | None = None  # the text llama-imatrix read, when a peer has +imatrix

    def row(self, artifact: str) -> QualityRow:
        return next(r for r in self.rows if r.artifact == artifact)


@dataclass
class BenchReport:
    bundle: str
    # our side: "native" (ExecuTorch's C++ runtime and its own kernels in a runner without torch),
    # "native-own-kernels" (the same runner with llama-mobile's experimental LLM op kernels), "python"
    # (TextLLMRunner through the Python bindings), or "none" (--quality-only)
    runtime: str
    threads: int
    runs: int
    warmup: int
    new_tokens: int
    size_bytes: dict[str, int]  # side -> bytes the app loads
    # side -> prompt length -> figure -> {"median", "min", "max", ...}
    figures: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    ratios: dict[str, dict[str, float]] | None = None  # ours / peer, per prompt length and figure
    quality: BenchQuality | None = None
    plot: str | None = None
    # side -> what produced its figures: "runtime", "kernels", "timing", "memory" (one line each)
    setup: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def sides(self) -> list[str]:
        return [side for side in (OURS, PEER) if side in self.figures]

    @property
    def measured(self) -> bool:
        return bool(self.figures)

    @property
    def ratios_size(self) -> float | None:
        return self.size_bytes[OURS] / self.size_bytes[PEER] if PEER in self.size_bytes else None

    def to_dict(self) -> dict:
        data = {name: value for name, value in dataclasses.asdict(self).items() if name != "figures"}
        data.update(self.figures)
        if self.ratios is not None:
            data["ratios_size"] = self.ratios_size
        return {key: value for key, value in data.items() if value is not None}
