"""Recovery after pruning: a short logit distillation, KL(teacher || student), on calibration windows.

Both models are export.model.Transformer instances built with attention_kernel="sdpa" (standard ops,
so autograd works), all_logits=True and a context of one window. Each forward starts from a fresh KV
cache, so no graph or state leaks from one window into the next. The embedding (and a tied output
layer with it) stays frozen: it is most of a small model's parameters and would double the optimizer's
memory for little gain. The state (trained weights, Adam moments, step, losses) is saved every
`save_every` steps; a run given the same state folder and fingerprint continues where it stopped.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

STATE_FILE = "distill-state.pt"


@dataclass
class DistillConfig:
    steps: int
    lr: float = 1e-4
    save_every: int = 25
    state_dir: Path | None = None  # where the resumable state lives; None: not resumable
    fingerprint: str = ""  # what the state belongs to: a state of another run is not resumed


@dataclass
class DistillResult:
    steps: int
    resumed_from: int
    trainable_parameters: int
    kl_before: float  # mean KL per position on the evaluation windows, nats
    kl_after: float
    losses: list[float] = field(default_factory=list)  # training KL per step
    seconds: float = 0.0

    def to_dict(self) -> dict:
        first, last = self.losses[:10], self.losses[-10:]
        return {"steps": self.steps, "resumed_from_step": self.resumed_from,
                "trainable_parameters": self.trainable_parameters,
                "eval_kl_before": round(self.kl_before, 6), "eval_kl_after": round(self.kl_after, 6),
                "train_kl_first10_mean": round(sum(first) / max(len(first), 1), 6),
                "train_kl_last10_mean": round(sum(last) / max(len(last), 1), 6), "seconds": round(self.seconds, 1)}


def _fresh_caches(model: torch.nn.Module) -> None:
    for layer in model.layers:
        layer.attention.k_cache = torch.zeros_like(layer.attention.k_cache)
        layer.attention.v_cache = torch.zeros_like(layer.attention.v_cache)


def window_logits(model: torch.nn.Module, window: list[int]) -> torch.Tensor:
    """[len(window), vocab] logits, from position 0 with an empty cache."""
    _fresh_caches(model)
    return model(torch.tensor([window]), torch.tensor([0]))[0]


def kl_divergence(teacher: torch.Tensor, student: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); over the kept output tokens when pruned."""
    if kept is not None and len(kept):
        teacher, student = teacher.index_select(-1, kept), student.index_select(-1, kept)
    t_logp = torch.log_softmax(teacher.float(), dim=-1)
    s_logp = torch.log_softmax(student.float(), dim=-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()


def trainable_parameters(student: torch.nn.Module) -> list[torch.nn.Parameter]:
    frozen = {id(student.tok_embeddings.weight)}
    return [p for p in student.parameters() if id(p) not in frozen]


def mean_kl(student, teacher, windows: list[list[int]], kept) -> float:
    with torch.no_grad():
        values = [float(kl_divergence(window_logits(teacher, w), window_logits(student, w), kept))
                  for w in windows]
    return sum(values) / len(values)


def distill(student: torch.nn.Module, teacher: torch.nn.Module, train: list[list[int]], evaluate: list[list[int]],
            config: DistillConfig, on_step: Callable[[int, float], None] | None = None) -> DistillResult:
    started = time.perf_counter()
    kept = student.output_token_ids if student.arch.output_token_ids else None
    params = trainable_parameters(student)
    names = {id(p): n for n, p in student.named_parameters()}
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    state_path = Path(config.state_dir) / STATE_FILE if config.state_dir else None
    step, losses, kl_before = 0, [], None
    if state_path is not None and state_path.exists():
        saved = torch.load(state_path, weights_only=True)
        if saved.get("fingerprint") == config.fingerprint:
            with torch.no_grad():
                for p in params:
                    p.copy_(saved["weights"][names[id(p)]])
            optimizer.load_state_dict(saved["optimizer"])
            step, losses, kl_before = saved["step"], list(saved["losses"]), saved["kl_before"]
            log.info("resuming distillation at step %d", step)
        else:
            log.info("ignoring a distillation state of another run: %s", state_path)
    resumed_from = step
    student.train(False)
    if kl_before is None:
        kl_before = mean_kl(student, teacher, evaluate, kept)
    while step < config.steps:
        window = train[step % len(train)]
        with torch.no_grad():
            target = window_logits(teacher, window)
        loss = kl_divergence(target, window_logits(student, window), kept)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if state_path is not None and (step % config.save_every == 0 or step == config.steps):
            _save_state(state_path, config.fingerprint, step, params, names, optimizer, losses, kl_before)
        if on_step:
            on_step(step, losses[-1])
    for p in params:
        p.requires_grad_(False)
    _fresh_caches(student)
    kl_after = mean_kl(student, teacher, evaluate, kept)
    return DistillResult(steps=step, resumed_from=resumed_from, trainable_parameters=sum(p.numel() for p in params),
                         kl_before=kl_before, kl_after=kl_after, losses=losses,
                         seconds=time.perf_counter() - started)


def _save_state(path: Path, fingerprint: str, step: int, params, names, optimizer, losses, kl_before) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save({"fingerprint": fingerprint, "step": step, "losses": losses, "kl_before": kl_before,
                "weights": {names[id(p)]: p.detach() for p in params},
                "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous state, never half a file
