"""Attention pruning by whole KV groups: a KV head goes with the query heads that read it.

The Architecture has one n_kv_heads for every block, so every block keeps the same number of groups
(each block picks its own most important ones). head_dim is unchanged; dim then no longer equals
n_heads x head_dim, which Architecture.attn_head_dim records.
"""
from __future__ import annotations

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import UsageError


def choose_groups(arch: Architecture, kv_heads: int, importance: list[torch.Tensor]) -> list[torch.Tensor]:
    if not 1 <= kv_heads <= arch.n_kv_heads:
        raise UsageError(f"--kv-heads {kv_heads} is outside 1..{arch.n_kv_heads} (the model's KV heads)",
                         fix="pruning only removes KV groups: choose fewer KV heads")
    return [torch.sort(torch.topk(imp, kv_heads).indices).values for imp in importance]


def _rows(groups: torch.Tensor, per_group: int) -> torch.Tensor:
    return (groups.unsqueeze(1) * per_group + torch.arange(per_group)).reshape(-1)


def prune_kv_groups(state: dict[str, torch.Tensor], arch: Architecture,
                    keep: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], Architecture]:
    kv_heads = len(keep[0])
    if kv_heads == arch.n_kv_heads:
        return state, arch
    head_dim, per_group = arch.head_dim, arch.n_heads // arch.n_kv_heads
    out = dict(state)
    for i, groups in enumerate(keep):
        p = f"layers.{i}.attention."
        kv_rows = _rows(groups, head_dim)
        q_rows = _rows(_rows(groups, per_group), head_dim)  # query heads g*per_group.., then their rows
        out[p + "wk.weight"] = state[p + "wk.weight"].index_select(0, kv_rows)
        out[p + "wv.weight"] = state[p + "wv.weight"].index_select(0, kv_rows)
        out[p + "wq.weight"] = state[p + "wq.weight"].index_select(0, q_rows)
        out[p + "wo.weight"] = state[p + "wo.weight"].index_select(1, q_rows)
    n_heads = kv_heads * per_group
    return out, arch.replace(n_heads=n_heads, n_kv_heads=kv_heads,
                             attn_head_dim=head_dim if n_heads * head_dim != arch.dim else None)
