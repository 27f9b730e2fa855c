"""torchao's weight quantizers, computed a block of rows at a time: faster, and without full-size temporaries.

Affine (min/max) quantization in rows: each row's (or row group's) scale depends on that row only, so
quantizing 32 rows at a time gives the same bytes; torchao's whole-matrix version makes two float32
temporaries the size of the matrix (+2 GiB for Llama 3.2's 128,256 x 2,048 embedding).

Scale-only HQQ: torchao's version runs its 20 iterations over the whole matrix at once: every step streams several
full-size float32 temporaries through memory (5 GiB of them for a 128,256 x 2,048 output layer). Here
each block of rows runs all its iterations while it sits in cache, and only the per-iteration scales
are kept. The global early stop is then applied exactly as torchao applies it (the first iteration at
which no scale of the matrix moved by more than the tolerance), so the result is the same bit for bit.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from llama_mobile.core import patches

BLOCK_ELEMENTS = 1 << 20  # 4 MiB of float32 per temporary: the working set stays in cache (measured best)
AFFINE_BLOCK_ELEMENTS = 1 << 20  # one pass each: bigger blocks, fewer calls


def _row_blocks(rows: int, columns: int, elements: int) -> list[tuple[int, int]]:
    step = max(1, elements // max(1, columns))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _splits_by_row(hp_tensor: torch.Tensor, block_size) -> bool:
    return hp_tensor.ndim == 2 and len(block_size) == 2 and block_size[0] == 1


def rowwise_choose_qparams(original):
    def choose(hp_tensor, mapping_type, block_size, *args, **kwargs):
        if not _splits_by_row(hp_tensor, block_size) or not kwargs.get("keepdim", False):
            return original(hp_tensor, mapping_type, block_size, *args, **kwargs)
        parts = [original(hp_tensor[a:b], mapping_type, block_size, *args, **kwargs)
                 for a, b in _row_blocks(*hp_tensor.shape, AFFINE_BLOCK_ELEMENTS)]
        scale = torch.cat([p[0] for p in parts])
        zero_point = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        return scale, zero_point
    return choose


def rowwise_quantize(original):
    def quantize(hp_tensor, block_size, scale, zero_point, *args, **kwargs):
        rows = hp_tensor.shape[0] if hp_tensor.ndim == 2 else -1
        if not _splits_by_row(hp_tensor, block_size) or scale.shape[0] != rows \
                or (zero_point is not None and zero_point.shape[0] != rows):
            return original(hp_tensor, block_size, scale, zero_point, *args, **kwargs)
        out = None
        for a, b in _row_blocks(*hp_tensor.shape, AFFINE_BLOCK_ELEMENTS):
            part = original(hp_tensor[a:b], block_size, scale[a:b],
                            None if zero_point is None else zero_point[a:b], *args, **kwargs)
            if out is None:
                out = torch.empty(hp_tensor.shape, dtype=part.dtype)
            out[a:b] = part
        return out
    return quantize


@torch.no_grad()
def hqq_scale_only(hp_tensor: torch.Tensor, block_size: list[int], qmin: int, qmax: int, *, iters: int = 20,
                   early_stop_tol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as torchao's ``_choose_qparams_and_quantize_scale_only_hqq`` (deterministic
    rounding), except that the quantized values come back as int8, the type its caller converts to."""
    if hp_tensor.ndim != 2 or len(block_size) != 2 or block_size[0] != 1:
        raise ValueError(f"HQQ takes a 2-D weight and block [1, group]; got {tuple(hp_tensor.shape)}, {block_size}")
    n, k = hp_tensor.shape
    group_size = int(block_size[1])
    if k % group_size:
        raise ValueError(f"in_features={k} must be divisible by group_size={group_size}")
    n_groups = k // group_size
    eps = torch.finfo(torch.float32).eps
    qabs = max(abs(qmin), abs(qmax)) or 1
    rows = max(1, BLOCK_ELEMENTS // k)
    steps = max(1, iters)
    moved = torch.zeros(steps, dtype=torch.float32)  # largest relative scale change at each iteration
    # torchao stops at the first iteration where no scale moved by the tolerance, else after the last.
    # Blocks only raise `moved`, so an iteration ruled out once stays out and its scales can be dropped.
    history: dict[int, torch.Tensor] = {}
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        candidates = {step for step in range(steps) if moved[step] < early_stop_tol} | {steps - 1}
        for step in candidates - history.keys():
            history[step] = torch.empty((n, n_groups), dtype=torch.float32)
        weight = hp_tensor[start:stop].to(torch.float32).reshape(stop - start, n_groups, group_size)
        prev_scale = (weight.abs().amax(dim=2) / qabs).clamp_min(eps)
        for step in range(steps):
            q = (weight / prev_scale.unsqueeze(-1)).round_().clamp_(qmin, qmax)
            num = (weight * q).sum(dim=2, dtype=torch.float32)
            den = (q * q).sum(dim=2, dtype=torch.float32)
            scale = torch.where(den > 0, num / den, prev_scale).clamp_min(eps).abs()
            rel = ((scale - prev_scale).abs() / prev_scale.clamp_min(eps)).max()
            moved[step] = torch.maximum(moved[step], rel)
            if step in history:
                history[step][start:stop] = scale
            prev_scale = scale
        for step in [s for s in history if s != steps - 1 and moved[s] >= early_stop_tol]:
            del history[step]
    below = (moved < early_stop_tol).nonzero()
    scale = history[int(below[0]) if len(below) else steps - 1]
    history.clear()
    qdata = torch.empty((n, k), dtype=torch.int8)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        weight = hp_tensor[start:stop].to(torch.float32).reshape(stop - start, n_groups, group_size)
        q = (weight / scale[start:stop].unsqueeze(-1)).round_().clamp_(qmin, qmax)
        qdata[start:stop] = q.reshape(stop - start, k).to(torch.int8)
    return qdata, scale.to(hp_tensor.dtype)


@contextlib.contextmanager
def rowwise_quantizers() -> Iterator[None]:
    """Route the quantizers IntxUnpackedToInt8Tensor calls (HQQ and affine) through the row-block ones.

    Patch "rowwise-quantizers" (core/patches.py): off, torchao quantizes whole matrices as shipped."""
    if not patches.enabled("rowwise-quantizers"):
        yield
        return
    from torchao.quantization.quantize_.workflows.intx import (
        intx_unpacked_to_int8_tensor as intx,
    )

    originals = {name: getattr(intx, name) for name in
                 ("_choose_qparams_and_quantize_scale_only_hqq", "choose_qparams_affine", "quantize_affine")}
    intx._choose_qparams_and_quantize_scale_only_hqq = hqq_scale_only
    intx.choose_qparams_affine = rowwise_choose_qparams(originals["choose_qparams_affine"])
    intx.quantize_affine = rowwise_quantize(originals["quantize_affine"])
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(intx, name, function)
