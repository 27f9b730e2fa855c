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
    return utils.random_hadamard_matrix(size, "cpu", seed=seed).to(torch.float64)


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
    """R1 [dim, dim] and R2 [head_dim, head_dim], float64, orthogonal."""

    r1: torch.Tensor
    r2: torch.Tensor
    n_kv_heads: int
    n_heads: int

    @classmethod
    def hadamard(cls, arch: Architecture, seed: int = 0) -> Rotation:
        return cls(r1=random_hadamard(arch.dim, seed), r2=random_hadamard(arch.head_dim, seed + 1),
                   n_kv_heads=arch.n_kv_heads, n_heads=arch.n_heads)

    # The residual stream's rotation on the input side of a matrix [rows, dim]: W diag(scale) R1.
    def _rotate_inputs(self, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty(weight.shape, dtype=torch.float32)
        for start in range(0, weight.shape[0], ROWS_PER_CHUNK):
            rows = weight[start:start + ROWS_PER_CHUNK].to(torch.float64)
            if scale is not None:
                rows = rows * scale
            out[start:start + ROWS_PER_CHUNK] = (rows @ self.r1).to(torch.float32)
        return out

    def _rotate_outputs(self, weight: torch.Tensor) -> torch.Tensor:
        """A matrix [dim, cols] writing into the residual stream: R1^T W."""
        return (self.r1.T @ weight.to(torch.float64)).to(torch.float32)

    def embedding(self, weight: torch.Tensor) -> torch.Tensor:
        return self._rotate_inputs(weight)

    def block(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A block's tensors (names relative to the block, e.g. ``attention.wq.weight``), rotated, norms
        folded; returns float32 tensors under the same names."""
        attention_scale = tensors["attention_norm.weight"].to(torch.float64)
        ffn_scale = tensors["ffn_norm.weight"].to(torch.float64)
        out = {name: t.to(torch.float32) for name, t in tensors.items()}
        for name in ("attention.wq", "attention.wk", "attention.wv"):
            out[f"{name}.weight"] = self._rotate_inputs(tensors[f"{name}.weight"], attention_scale)
        for name in ("feed_forward.w1", "feed_forward.w3"):
            out[f"{name}.weight"] = self._rotate_inputs(tensors[f"{name}.weight"], ffn_scale)
        out["attention.wo.weight"] = self._rotate_outputs(tensors["attention.wo.weight"])
        out["feed_forward.w2.weight"] = self._rotate_outputs(tensors["feed_forward.w2.weight"])
        out["attention_norm.weight"] = torch.ones_like(out["attention_norm.weight"])
        out["ffn_norm.weight"] = torch.ones_like(out["ffn_norm.weight"])
        # R2: value heads rotate on their output side, wo's matching input columns alike.
        head_dim = self.r2.shape[0]
        wv = out["attention.wv.weight"].to(torch.float64)  # [n_kv * head_dim, dim]
        wv = torch.einsum("ji,hjd->hid", self.r2, wv.view(self.n_kv_heads, head_dim, -1))
        out["attention.wv.weight"] = wv.reshape(self.n_kv_heads * head_dim, -1).to(torch.float32)
        wo = out["attention.wo.weight"].to(torch.float64)  # [dim, n_heads * head_dim]
        wo = (wo.view(wo.shape[0], self.n_heads, head_dim) @ self.r2).reshape(wo.shape[0], -1)
        out["attention.wo.weight"] = wo.to(torch.float32)
        return out

    def output(self, weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
        """An untied output layer [rows, dim] with the final norm's scale folded in."""
        return self._rotate_inputs(weight, norm_weight.to(torch.float64))

    def output_mix(self, norm_weight: torch.Tensor) -> torch.Tensor:
        """A tied model's final-norm scale in the rotated basis: R1^T diag(g) R1 (symmetric, so it is its
        own nn.Linear weight)."""
        g = norm_weight.to(torch.float64)
        return (self.r1.T @ (g[:, None] * self.r1)).to(torch.float32)
