"""Depth pruning: remove whole decoder blocks and renumber the rest."""
from __future__ import annotations

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import UsageError

BLOCK_METHODS = ("importance", "last")


def choose_blocks(n_layers: int, *, count: int | None = None, at: list[int] | None = None,
                  method: str = "importance", influence: list[float] | None = None) -> list[int]:
    """The block indices to drop (ascending): explicit `at`, or `count` by lowest influence or the last."""
    if at is not None:
        bad = [i for i in at if not 0 <= i < n_layers]
        if bad:
            raise UsageError(f"block index {bad[0]} is outside 0..{n_layers - 1}",
                             fix=f"give indices of the model's {n_layers} blocks")
        if len(set(at)) != len(at):
            raise UsageError("a block index repeats", fix="list each block to drop once")
        dropped = sorted(at)
    elif count:
        if method not in BLOCK_METHODS:
            raise UsageError(f"unknown block choice {method!r}", fix=f"use one of {', '.join(BLOCK_METHODS)}")
        if count < 0:
            raise UsageError(f"cannot drop {count} blocks", fix="give a positive number")
        if method == "last":
            dropped = list(range(n_layers - count, n_layers)) if count <= n_layers else list(range(n_layers))
        else:
            order = sorted(range(n_layers), key=lambda i: (influence[i], i))
            dropped = sorted(order[:count])
    else:
        return []
    if len(dropped) >= n_layers:
        raise UsageError(f"dropping {len(dropped)} of {n_layers} blocks leaves none",
                         fix="drop fewer blocks than the model has")
    return dropped


def drop_blocks(state: dict[str, torch.Tensor], arch: Architecture,
                dropped: list[int]) -> tuple[dict[str, torch.Tensor], Architecture]:
    if not dropped:
        return state, arch
    kept = [i for i in range(arch.n_layers) if i not in set(dropped)]
    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    for name, tensor in state.items():
        if not name.startswith("layers."):
            out[name] = tensor
            continue
        _, index, rest = name.split(".", 2)
        if int(index) in renumber:
            out[f"layers.{renumber[int(index)]}.{rest}"] = tensor
    widths = tuple(arch.layer_ffn_hidden[i] for i in kept) if arch.layer_ffn_hidden else None
    return out, arch.replace(n_layers=len(kept), layer_ffn_hidden=widths)
