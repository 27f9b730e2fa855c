"""Distances between a candidate's and a reference's logits, per position and summarised."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

# A pruned output layer scores only its kept tokens; the model gives every other token a floor logit
# (-1e4, export/model.py). Columns never above this are left out of every metric, and perplexity is
# taken over the positions whose next token is scored.
UNSCORED = -1.0e3


@dataclass
class ParityMetrics:
    positions: int
    top1_agreement: float
    top5_overlap: float
    cosine_mean: float
    cosine_min: float
    kl_mean: float
    kl_p99: float
    ppl_reference: float
    ppl_candidate: float
    ppl_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def kl_per_position(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """KL(reference || candidate) over the vocabulary at each position, in nats."""
    ref_logp = torch.log_softmax(reference.double(), dim=-1)
    cand_logp = torch.log_softmax(candidate.double(), dim=-1)
    return (ref_logp.exp() * (ref_logp - cand_logp)).sum(-1)


def perplexity(logits: torch.Tensor, next_tokens: torch.Tensor) -> float:
    """exp of the mean negative log-likelihood of next_tokens[i] under logits[i]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    nll = -logp.gather(-1, next_tokens.long().unsqueeze(-1)).squeeze(-1)
    return float(math.exp(nll.mean().item()))


def _scored_only(reference, candidate, next_tokens, scored):
    """Keep the columns a pruned output layer scores; next tokens outside them become -1."""
    column = torch.full((scored.numel(),), -1, dtype=torch.long)
    column[scored] = torch.arange(int(scored.sum()))
    return reference[:, scored], candidate[:, scored], column[next_tokens.long()]


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, token_ids: list[int]) -> ParityMetrics:
    """reference/candidate: [N, vocab] logits at positions 0..N-1 of token_ids."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    reference, candidate = reference.double(), candidate.double()
    next_tokens = torch.tensor(token_ids[1:])
    scored = (reference > UNSCORED).any(0)
    if not bool(scored.all()):
        reference, candidate, next_tokens = _scored_only(reference, candidate, next_tokens, scored)
    top1 = (reference.argmax(-1) == candidate.argmax(-1)).double().mean().item()
    k = min(5, reference.shape[-1])
    ref_top, cand_top = reference.topk(k, dim=-1).indices, candidate.topk(k, dim=-1).indices
    overlap = (ref_top.unsqueeze(-1) == cand_top.unsqueeze(-2)).any(-1).double().sum(-1) / k
    cosine = torch.nn.functional.cosine_similarity(reference, candidate, dim=-1)
    kl = kl_per_position(reference, candidate)
    in_vocab = next_tokens >= 0
    # Over no scored token at all, exp of an empty mean: 1 for both.
    ppl_ref = perplexity(reference[:-1][in_vocab], next_tokens[in_vocab]) if in_vocab.any() else 1.0
    ppl_cand = perplexity(candidate[:-1][in_vocab], next_tokens[in_vocab]) if in_vocab.any() else 1.0
    return ParityMetrics(
        positions=int(reference.shape[0]), top1_agreement=top1, top5_overlap=overlap.mean().item(),
        cosine_mean=cosine.mean().item(), cosine_min=cosine.min().item(), kl_mean=kl.mean().item(),
        kl_p99=torch.quantile(kl, 0.99).item(), ppl_reference=ppl_ref, ppl_candidate=ppl_cand,
        ppl_ratio=ppl_cand / ppl_ref,
    )


def pool_metrics(parts: list[ParityMetrics]) -> ParityMetrics:
    """Several windows' metrics as one: means weighted by positions, perplexities from the pooled mean
    log-likelihood (each window's perplexity covers its positions - 1 next tokens), the worst cosine, and
    the largest per-window KL 99th percentile (an upper bound of the pooled one)."""
    if not parts:
        raise ValueError("no windows to pool")
    n = sum(p.positions for p in parts)
    nexts = [max(p.positions - 1, 0) for p in parts]

    def mean(field: str) -> float:
        return sum(getattr(p, field) * p.positions for p in parts) / n

    def pooled_ppl(field: str) -> float:
        total = sum(nexts)
        if total == 0:
            return 1.0
        return math.exp(sum(math.log(getattr(p, field)) * k for p, k in zip(parts, nexts)) / total)

    ppl_ref, ppl_cand = pooled_ppl("ppl_reference"), pooled_ppl("ppl_candidate")
    return ParityMetrics(positions=n, top1_agreement=mean("top1_agreement"), top5_overlap=mean("top5_overlap"),
                         cosine_mean=mean("cosine_mean"), cosine_min=min(p.cosine_min for p in parts),
                         kl_mean=mean("kl_mean"), kl_p99=max(p.kl_p99 for p in parts), ppl_reference=ppl_ref,
                         ppl_candidate=ppl_cand, ppl_ratio=ppl_cand / ppl_ref)
