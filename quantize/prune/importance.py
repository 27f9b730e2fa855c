"""What each part of the model contributes on calibration text, measured in one pass.

- Block influence (ShortGPT, Men et al. 2024): 1 - cos(hidden state in, hidden state out), averaged
  over tokens. A block that barely turns the residual stream can go.
- MLP neurons: mean |silu(w1 x) * (w3 x)| per neuron over tokens (the input of w2), the activation
  criterion Meta used to narrow Llama Guard 3-1B's MLP.
- KV groups: the mean L2 norm of each query head's attention output (the input of wo) per token,
  summed over the query heads that share a KV head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Importance:
    block: list[float]  # per block, 1 - mean cosine(in, out)
    mlp: list[torch.Tensor]  # per block, [hidden] mean |activation| per neuron
    kv_groups: list[torch.Tensor]  # per block, [n_kv_heads]
    tokens: int

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "block_influence": [round(b, 6) for b in self.block],
                "kv_group_importance": [[round(float(v), 6) for v in g] for g in self.kv_groups],
                "mlp_neuron_importance_mean": [round(float(m.mean()), 6) for m in self.mlp]}


def measure_importance(model: torch.nn.Module, windows: list[list[int]],
                       on_window: Callable[[int], None] | None = None) -> Importance:
    """Run `model` (an export.model.Transformer) over each token window from position 0."""
    n_layers = len(model.layers)
    cos_sum = [0.0] * n_layers
    mlp_sum = [torch.zeros(layer.feed_forward.w2.in_features, dtype=torch.float64) for layer in model.layers]
    kv_sum = [torch.zeros(layer.attention.n_kv_heads, dtype=torch.float64) for layer in model.layers]
    hooks = []

    def block_hook(i):
        def hook(_module, args, output):
            cos = torch.nn.functional.cosine_similarity(args[0].double(), output.double(), dim=-1)
            cos_sum[i] += float(cos.sum())
        return hook

    def mlp_hook(i):
        def hook(_module, args):
            mlp_sum[i] += args[0].double().abs().reshape(-1, args[0].shape[-1]).sum(0)
        return hook

    def kv_hook(i, attention):
        def hook(_module, args):
            x = args[0].double()
            heads = x.reshape(-1, attention.n_heads, attention.head_dim).norm(dim=-1).sum(0)
            kv_sum[i] += heads.reshape(attention.n_kv_heads, -1).sum(-1)
        return hook

    for i, layer in enumerate(model.layers):
        hooks.append(layer.register_forward_hook(block_hook(i)))
        hooks.append(layer.feed_forward.w2.register_forward_pre_hook(mlp_hook(i)))
        hooks.append(layer.attention.wo.register_forward_pre_hook(kv_hook(i, layer.attention)))
    tokens = 0
    try:
        with torch.no_grad():
            for n, window in enumerate(windows):
                model.reset_cache()
                model(torch.tensor([window]), torch.tensor([0]))
                tokens += len(window)
                if on_window:
                    on_window(n + 1)
    finally:
        for hook in hooks:
            hook.remove()
    return Importance(block=[1.0 - c / tokens for c in cos_sum], mlp=[(m / tokens).float() for m in mlp_sum],
                      kv_groups=[(k / tokens).float() for k in kv_sum], tokens=tokens)
