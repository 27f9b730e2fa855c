"""Low-rank adapter branches on a model's (quantized or float) linears: Meta's QAT+LoRA checkpoints and
`export --adapter` attach the same layer."""
from __future__ import annotations

import torch
from torch import nn

LORA_TAG = "lora"  # in the name of every adapter parameter (lora_a, lora_b), and of nothing else


class LoraLinear(nn.Module):
    """A linear plus its float low-rank adaptor, y = W x + scale * B (A x)."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.scale = base, float(scale)
        self.lora_a = nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.lora_a.weight = nn.Parameter(a.to(torch.float32), requires_grad=False)
        self.lora_b = nn.Linear(b.shape[1], b.shape[0], bias=False)
        self.lora_b.weight = nn.Parameter(b.to(torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def attach(model: nn.Module, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float) -> None:
    """Give each linear named in ``weights`` (module name -> (A, B)) a low-rank branch, after taking off
    every branch the model had; empty ``weights`` only takes them off."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            parent, child = _parent(model, name)
            setattr(parent, child, module.base)
    for name, (a, b) in weights.items():
        parent, child = _parent(model, name)
        setattr(parent, child, LoraLinear(getattr(parent, child), a, b, scale))


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return model.get_submodule(path), child
