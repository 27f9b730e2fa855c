"""Function-preserving rotations of the float weights (QuaRot / SpinQuant's R1 and R2), applied a part at a
time inside the streaming build, before the part is quantized.

- Every RMSNorm's scale is folded into the linears it feeds (wq/wk/wv, w1/w3, the output layer); the norm
  keeps a weight of ones, so it computes a plain x / rms(x) (or the L2 form), which commutes with any
  orthogonal matrix: rms(x R) = rms(x).
- R1, a randomized Hadamard matrix of the model width (torchao's SpinQuant utilities, which know the
  non-power-of-two sizes 12, 20, 28, 36, ...: SmolLM2's 576 = 36 x 16), rotates the residual stream: the
  embedding's rows, the inputs of wq/wk/wv/w1/w3 and the output layer, the outputs of wo/w2.
- R2, a randomized Hadamard matrix of the head width, rotates every value head (wv's outputs) and the
  matching inputs of wo; grouped-query heads share it.

Outliers of the activations and weights are spread over all channels, so int4 groups and int8 per-token
activation scales lose less. Nothing is added at runtime, except for a tied embedding/output matrix: the
lookup and the output layer must read the same rotated matrix M R1, so the final norm's scale g cannot go
into it; a small dim x dim linear ``output_mix`` = R1^T diag(g) R1 after the final norm carries it instead
(dim^2 weights against vocab x dim for an untied copy).

Rotations are computed in float64 on the CPU from a seeded generator, so the same seed gives the same bytes.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import torch

from llama_mobile.core.architecture import Architecture

ROTATION_KINDS = ("hadamard",)
ROWS_PER_CHUNK = 4096  # rows of a vocabulary-sized matrix rotated at once (bounded float64 scratch)


def _hadamard_utils():
    # torchao prints a note about its optional CUDA kernel on import; keep it off stdout (--json output).
    with contextlib.redirect_stdout(io.StringIO()):
        from torchao.prototype.spinquant import hadamard_utils
    return hadamard_utils


def random_hadamard(size: int, seed: int) -> torch.Tensor:
    """An orthogonal [size, size] float64 matrix: Hadamard times random signs (torchao's SpinQuant helper).
    Sizes must be a power of two times 1 or one of torchao's known sizes (12, 20, 28, 36, 40, 44, 52, ...)."""
    utils = _hadamard_utils()
    try:
        utils.get_hadK(size)
    except AssertionError:
        raise ValueError(f"no Hadamard matrix of size {size} (a power of two, or one times 12, 20, 28, 36, "
                         f"40, 44, 52, 60, 108, 140, 156 or 172)") from None
    matrix = utils.random_hadamard_matrix(size, "cpu", seed=seed).to(torch.float64)
    # Every entry is +-1/sqrt(size); torchao divides by a float32 square root (off by ~1e-7): exact again.
    return torch.sign(matrix) / math.sqrt(size)


def hadamard_sizes_supported(arch: Architecture) -> list[str]:
    """The widths of ``arch`` that have no Hadamard matrix (empty: the rotation applies)."""
    utils = _hadamard_utils()
    problems = []
    for what, size in (("dim", arch.dim), ("head_dim", arch.head_dim)):
        try:
            utils.get_hadK(size)
        except AssertionError:
            problems.append(f"{what} {size}")
    return problems


@dataclass(frozen=True)
class Rotation:
    """R1 [dim, dim] and R2 [head_dim, head_dim], float64, orthogonal; None: not rotated."""

    r1: torch.Tensor | None
    r2: torch.Tensor | None
    n_kv_heads: int
    n_heads: int
    # bool [dim]: channels R1 leaves alone (identity there, their norm scales stay in the norms); None: all
    # channels rotate. With R1 = None every channel is kept.
    keep: torch.Tensor | None = None

    @classmethod
    def hadamard(cls, arch: Architecture, seed: int = 0, r1: bool = True, r2: bool = True) -> Rotation:
        return cls(r1=random_hadamard(arch.dim, seed) if r1 else None,
                   r2=random_hadamard(arch.head_dim, seed + 1) if r2 else None,
                   n_kv_heads=arch.n_kv_heads, n_heads=arch.n_heads)

    def mixes_output(self, tied: bool) -> bool:
        """Whether the model needs ``output_mix`` (Transformer / skeleton): a tied matrix rotated by R1."""
        return tied and self.r1 is not None

    def _split(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A norm scale g as (what the norm keeps, what folds into the linears): kept channels keep their
        scale, the rotated ones a common constant (their RMS, which commutes with R1)."""
        g = g.to(torch.float64)
        if self.r1 is None:
            return g, torch.ones_like(g)
        if self.keep is None:
            return torch.ones_like(g), g
        c = g[~self.keep].pow(2).mean().sqrt().clamp_min(1e-6)
        norm = torch.where(self.keep, g, c)
        return norm, g / norm

    def _rotate_inputs(self, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream's rotation on the input side of a matrix [rows, dim]: W diag(scale) R1."""
        if self.r1 is None:
            return weight.to(torch.float32)
        out = torch.empty(weight.shape, dtype=torch.float32)
        for start in range(0, weight.shape[0], ROWS_PER_CHUNK):
            rows = weight[start:start + ROWS_PER_CHUNK].to(torch.float64)
            if scale is not None:
                rows = rows * scale
            out[start:start + ROWS_PER_CHUNK] = (rows @ self.r1).to(torch.float32)
        return out

    def _rotate_outputs(self, weight: torch.Tensor) -> torch.Tensor:
        """A matrix [dim, cols] writing into the residual stream: R1^T W."""
        if self.r1 is None:
            return weight.to(torch.float32)
        return (self.r1.T @ weight.to(torch.float64)).to(torch.float32)

    def embedding(self, weight: torch.Tensor) -> torch.Tensor:
        return self._rotate_inputs(weight)

    def block(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A block's tensors (names relative to the block, e.g. ``attention.wq.weight``), rotated, norms
        folded; returns float32 tensors under the same names."""
        attention_norm, attention_scale = self._split(tensors["attention_norm.weight"])
        ffn_norm, ffn_scale = self._split(tensors["ffn_norm.weight"])
        out = {name: t.to(torch.float32) for name, t in tensors.items()}
        for name in ("attention.wq", "attention.wk", "attention.wv"):
            out[f"{name}.weight"] = self._rotate_inputs(tensors[f"{name}.weight"], attention_scale)
        for name in ("feed_forward.w1", "feed_forward.w3"):
            out[f"{name}.weight"] = self._rotate_inputs(tensors[f"{name}.weight"], ffn_scale)
        out["attention.wo.weight"] = self._rotate_outputs(tensors["attention.wo.weight"])
        out["feed_forward.w2.weight"] = self._rotate_outputs(tensors["feed_forward.w2.weight"])
        out["attention_norm.weight"] = attention_norm.to(torch.float32)
        out["ffn_norm.weight"] = ffn_norm.to(torch.float32)
        if self.r2 is None:
            return out
        # R2: value heads rotate on their output side, wo's matching input columns alike.
        head_dim = self.r2.shape[0]
        wv = out["attention.wv.weight"].to(torch.float64)  # [n_kv * head_dim, dim]
        wv = torch.einsum("ji,hjd->hid", self.r2, wv.view(self.n_kv_heads, head_dim, -1))
        out["attention.wv.weight"] = wv.reshape(self.n_kv_heads * head_dim, -1).to(torch.float32)
        wo = out["attention.wo.weight"].to(torch.float64)  # [dim, n_heads * head_dim]
        wo = (wo.view(wo.shape[0], self.n_heads, head_dim) @ self.r2).reshape(wo.shape[0], -1)
        out["attention.wo.weight"] = wo.to(torch.float32)
        return out

    def final_norm(self, norm_weight: torch.Tensor) -> torch.Tensor:
        return self._split(norm_weight)[0].to(torch.float32)

    def output(self, weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
        """An untied output layer [rows, dim] with the final norm's scale folded in."""
        return self._rotate_inputs(weight, self._split(norm_weight)[1])

    def output_mix(self, norm_weight: torch.Tensor) -> torch.Tensor:
        """A tied model's final-norm scale in the rotated basis: R1^T diag(g) R1 (symmetric, so it is its
        own nn.Linear weight)."""
        g = self._split(norm_weight)[1]
        r1 = self.r1 if self.r1 is not None else torch.eye(len(g), dtype=torch.float64)
        return (r1.T @ (g[:, None] * r1)).to(torch.float32)
