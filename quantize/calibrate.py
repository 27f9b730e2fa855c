"""Calibrated 4-bit weights: GPTQ with importance-weighted group scales, one block at a time.

What a calibrated layer ships is exactly what an uncalibrated one ships: int4 symmetric values and one
scale per group of 32 (``Int8DynamicActivationIntxWeightConfig``, lowered to XNNPACK's qd8-qb4w kernels).
Calibration only chooses *which* integers and scales, from how the layer's inputs behave on calibration text:

- ``imatrix``: llama.cpp's importance-matrix idea. Each input channel's second moment E[x_j^2] over the
  calibration tokens weights the rounding error when each group's scale is chosen (a grid of candidate
  scales, each refined by one weighted least-squares step); the values are then rounded to nearest.
- ``gptq``: GPTQ (Frantar et al. 2022, Algorithm 1; torchao ``prototype/gptq``): columns are rounded one
  at a time and each column's error is pushed onto the columns not yet rounded through the inverse of
  H = 2 X^T X / n, so the layer's *output* error on the calibration inputs is what is minimised, not the
  weight error. Each group's scale is chosen, when GPTQ reaches the group, by the same weighted search.

Hessians are collected by ``HessianObserver`` (forward pre-hooks on the block's linears while the block
runs the calibration tokens); layers fed the same tensor (wq/wk/wv, w1/w3) share one Hessian.
torchao's own GPTQ (``gptq_quantize``) is CUDA-only and produces Int4Tensor/Int8Tensor (other kernels),
so its algorithm is followed here on CPU; the result is handed to torchao's own config handler as a
custom scale, the route torchao's QAT ``convert`` uses for learned scales (see apply.py).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import lapack
from torch import nn

from llama_mobile.quantize.recipe import Calibration, LayerQuant

SCALE_GRID = tuple(0.70 + 0.025 * i for i in range(21))  # x absmax/8: 0.70 .. 1.20
GPTQ_BLOCK = 128  # columns rounded between two lazy batch updates (GPTQ's B)


def calibration_windows(token_ids: list[int], calibration: Calibration, context: int,
                        bos_id: int | None) -> list[list[int]]:
    """``calibration.tokens`` tokens of the text as sequences of at most ``calibration.sequence`` (and the
    context), each starting with BOS; which windows of the text is fixed by ``calibration.seed``."""
    length = max(2, min(calibration.sequence, context))
    body = length - (bos_id is not None)
    windows = [token_ids[start:start + body] for start in range(0, len(token_ids) - body + 1, body)]
    if not windows:
        windows = [token_ids[:body]]
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(calibration.seed)).tolist()
    wanted = max(1, -(-calibration.tokens // length))
    chosen = sorted(order[:wanted])  # text order: the same windows give the same Hessian sums
    return [([bos_id] if bos_id is not None else []) + windows[i] for i in chosen]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def calibrates(quant: LayerQuant) -> bool:
    """Layers calibration rewrites: grouped symmetric integer weights (the int4 g32 linears)."""
    return not quant.is_float and quant.symmetric and quant.group_size > 0


class HessianObserver:
    """Sums H = 2/n X^T X of each named linear's input while a block runs the calibration tokens."""

    def __init__(self):
        self.hessians: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._shared: dict[str, str] = {}  # layer -> the layer whose Hessian it shares
        self._last: tuple[torch.Tensor, str] | None = None

    @contextlib.contextmanager
    def observe(self, modules: dict[str, nn.Linear]) -> Iterator[None]:
        handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._last = None

    def _hook(self, name: str) -> Callable:
        def record(module, args):
            x = args[0]
            if self._last is not None and self._last[0] is x:  # the same input as the previous layer
                self._shared[name] = self._last[1]
                return
            x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            if name not in self.hessians:
                self.hessians[name] = torch.zeros(x2.shape[1], x2.shape[1], dtype=torch.float32)
                self.tokens[name] = 0
            self.hessians[name].addmm_(x2.t(), x2)
            self.tokens[name] += x2.shape[0]
            self._last = (x, name)
        return record

    def owner(self, name: str) -> str:
        """The layer whose Hessian ``name`` shares (itself when it has its own)."""
        return self._shared.get(name, name)

    def take(self, owner: str) -> torch.Tensor | None:
        """H = 2/n X^T X of ``owner`` (None when it never ran), handed over: scaled in place and dropped here,
        so a 8192-wide Hessian exists once."""
        if owner not in self.hessians:
            return None
        return self.hessians.pop(owner).mul_(2.0 / max(1, self.tokens.pop(owner)))

    def clear(self) -> None:
        self.hessians.clear()
        self.tokens.clear()
        self._shared.clear()


@torch.no_grad()
def weighted_group_scales(weight: torch.Tensor, importance: torch.Tensor, group_size: int, qmin: int,
                          qmax: int) -> torch.Tensor:
    """One scale per group of ``weight`` [rows, k] minimising sum_j importance_j (w_j - s q_j)^2,
    q = clamp(round(w / s)): each candidate of a grid around absmax/8, and each refined by one weighted
    least-squares step (HQQ's update with weights); the first best wins. Returns [rows, k // group_size]."""
    rows, k = weight.shape
    step = max(1, SEARCH_ELEMENTS // (len(SCALE_GRID) * k))
    return torch.cat([_search(weight[a:a + step], importance, group_size, qmin, qmax)
                      for a in range(0, rows, step)])


SEARCH_ELEMENTS = 1 << 18  # candidates x weights per batch of rows: small enough to stay in cache (5x faster)


def _search(weight: torch.Tensor, importance: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    rows, k = weight.shape
    w = weight.to(torch.float32).reshape(1, rows, k // group_size, group_size)
    d = importance.to(torch.float32).reshape(1, 1, k // group_size, group_size)
    eps = torch.finfo(torch.float32).eps
    base = (w.abs().amax(dim=3) / max(abs(qmin), abs(qmax))).clamp_min(eps)
    grid = torch.tensor(SCALE_GRID, dtype=torch.float32).reshape(-1, 1, 1)
    raw = base * grid  # [candidates, rows, groups]
    q = (w / raw.unsqueeze(-1)).round_().clamp_(qmin, qmax)
    num, den = (d * w * q).sum(dim=3), (d * q * q).sum(dim=3)
    refined = torch.where(den > 0, num / den.clamp_min(eps), raw).clamp_min(eps)
    scales = torch.stack([raw, refined], dim=1).flatten(0, 1)  # candidate order: raw, refined, raw, ...
    q = (w / scales.unsqueeze(-1)).round_().clamp_(qmin, qmax)
    err = (d * (w - scales.unsqueeze(-1) * q).square()).sum(dim=3)
    best = err.argmin(dim=0, keepdim=True)  # the first of equal errors, as a strict "<" scan would keep
    return scales.gather(0, best)[0]


def _round(w: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return (w / scale).round_().clamp_(qmin, qmax)


@torch.no_grad()
def imatrix_quantize(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, qmin: int,
                     qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted scales, values rounded to nearest: (int8 values [rows, k], scales [rows, groups])."""
    importance = hessian.diagonal().clamp_min(0) + 1e-8 * hessian.diagonal().mean().clamp_min(1e-30)
    scale = weighted_group_scales(weight, importance, group_size, qmin, qmax)
    rows, k = weight.shape
    w = weight.to(torch.float32).reshape(rows, k // group_size, group_size)
    q = _round(w, scale.unsqueeze(-1), qmin, qmax)
    return q.reshape(rows, k).to(torch.int8), scale


@dataclass
class Factored:
    """What GPTQ needs of a Hessian, computed once for the layers that share it (wq/wk/wv, w1/w3)."""

    hinv: torch.Tensor  # upper Cholesky factor of the damped H^-1
    importance: torch.Tensor  # H's diagonal (dead inputs 1)
    dead: torch.Tensor  # inputs that never saw a nonzero activation


@torch.no_grad()
def factor_hessian(hessian: torch.Tensor, damp: float) -> Factored:
    """GPTQ's preparation of H (consumed: modified in place)."""
    h = hessian.to(torch.float32)
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    importance = h.diagonal().clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    return Factored(_upper_inverse_cholesky(h), importance, dead)


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor | Factored, group_size: int, qmin: int, qmax: int,
                  *, damp: float = 0.1, block: int = GPTQ_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ (torchao ``prototype/gptq`` ``gptq_quantize``, Algorithm 1) on CPU for symmetric integer
    groups; each group's scale is chosen by ``weighted_group_scales`` when the group is reached.
    ``hessian`` is H (left untouched) or its ``factor_hessian``. Returns (int8 values [rows, k], scales
    [rows, k // group_size])."""
    factored = hessian if isinstance(hessian, Factored) else factor_hessian(hessian.clone(), damp)
    hinv, importance = factored.hinv, factored.importance
    rows, k = weight.shape
    w = weight.to(torch.float32).clone()
    w[:, factored.dead] = 0
    q_all = torch.empty((rows, k), dtype=torch.int8)
    scales = torch.empty((rows, k // group_size), dtype=torch.float32)
    block = max(group_size, block - block % group_size)
    for b0 in range(0, k, block):
        b1 = min(k, b0 + block)
        cur = w[:, b0:b1]
        err_block = torch.zeros_like(cur)
        hinv_cur = hinv[b0:b1, b0:b1]
        for g0 in range(b0, b1, group_size):
            g = g0 // group_size
            scale = weighted_group_scales(cur[:, g0 - b0:g0 - b0 + group_size],
                                          importance[g0:g0 + group_size], group_size, qmin, qmax)[:, 0]
            scales[:, g] = scale
            j0, j1 = g0 - b0, g0 - b0 + group_size
            grp, hinv_grp = cur[:, j0:j1], hinv_cur[j0:j1, j0:j1]  # columns inside the group first
            for j in range(group_size):
                col = grp[:, j]
                q = _round(col, scale, qmin, qmax)
                q_all[:, g0 + j] = q.to(torch.int8)
                err = (col - q * scale) / hinv_grp[j, j]
                grp[:, j:].addr_(err, hinv_grp[j, j:], alpha=-1)
                err_block[:, j0 + j] = err
            if j1 < cur.shape[1]:  # then the rest of the block at once
                cur[:, j1:].addmm_(err_block[:, j0:j1], hinv_cur[j0:j1, j1:], alpha=-1)
        if b1 < k:
            w[:, b1:].addmm_(err_block, hinv[b0:b1, b1:], alpha=-1)
    return q_all, scales


def _upper_inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (GPTQ's Hinv, U^T U = H^-1); more damping if H is not positive
    definite. With J the reversal, J H J = L L^T gives U = J L^-1 J: one Cholesky and one triangular
    inverse (LAPACK's trtri), half the work of inverting H and factoring again (5.5 s -> 2.5 s for w2 of
    Llama 3.2 1B on two cores). ``h`` is consumed; at most two n x n matrices live at once."""
    flipped = h.flip(0, 1)
    del h
    mean = flipped.diagonal().mean()
    previous = 0.0
    for extra in (0.0, 0.01, 0.1, 1.0, 10.0, 100.0):
        if extra:
            flipped.diagonal().add_((extra - previous) * mean)
        previous = extra
        lower, info = torch.linalg.cholesky_ex(flipped)
        if int(info) == 0:
            del flipped
            # torch's factor is column-major already, the layout trtri inverts in place without a copy
            inverse, info = lapack.strtri(np.asfortranarray(lower.numpy()), lower=1, overwrite_c=1)
            if info != 0:
                break
            return torch.from_numpy(inverse).flip(0, 1).contiguous()
    raise RuntimeError("the calibration Hessian is not positive definite even with damping")


@dataclass
class Calibrator:
    """Holds the recipe's calibration and the Hessians of the block being built."""

    calibration: Calibration
    observer: HessianObserver
    factored: dict[str, Factored | torch.Tensor] = field(default_factory=dict)  # by Hessian owner

    @classmethod
    def create(cls, calibration: Calibration) -> Calibrator:
        return cls(calibration, HessianObserver())

    def solve(self, name: str, weight: torch.Tensor, quant: LayerQuant) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(int8 values, scales) for the layer, or None when it saw no calibration input."""
        owner = self.observer.owner(name)
        if owner not in self.factored:
            hessian = self.observer.take(owner)
            if hessian is None:
                return None
            self.factored[owner] = (factor_hessian(hessian, self.calibration.damp)
                                    if self.calibration.method == "gptq" else hessian)
        prepared = self.factored[owner]
        qmax = (1 << (quant.weight_bits - 1)) - 1
        qmin = -qmax - 1
        if self.calibration.method == "gptq":
            return gptq_quantize(weight, prepared, quant.group_size, qmin, qmax)
        return imatrix_quantize(weight, prepared, quant.group_size, qmin, qmax)

    def clear(self) -> None:
        """After a part: its Hessians and factors are not needed again."""
        self.observer.clear()
        self.factored.clear()
