"""Width pruning of the MLPs: keep each layer's most active neurons (rows of w1/w3, columns of w2)."""
from __future__ import annotations

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import UsageError


def target_widths(arch: Architecture, widths: list[int]) -> list[int]:
    """One width for every layer (uniform) or one per layer; never wider than a layer is now."""
    if len(widths) == 1:
        widths = widths * arch.n_layers
    if len(widths) != arch.n_layers:
        raise UsageError(f"{len(widths)} MLP widths for {arch.n_layers} blocks (after block pruning)",
                         fix="give one width, or one per remaining block")
    for i, width in enumerate(widths):
        current = arch.ffn_hidden_of(i)
        if width > current:
            raise UsageError(f"MLP width {width} is larger than block {i}'s current {current}",
                             fix="pruning only narrows: choose a smaller --mlp-hidden")
        if width < 1:
            raise UsageError(f"MLP width {width} must be positive", fix="choose a width of at least 1")
    return widths


def choose_neurons(importance: list[torch.Tensor], widths: list[int]) -> list[torch.Tensor]:
    """Per layer, the indices (ascending, so neuron order is kept) of the `width` most important."""
    return [torch.sort(torch.topk(imp, width).indices).values for imp, width in zip(importance, widths)]


def prune_mlp(state: dict[str, torch.Tensor], arch: Architecture,
              keep: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], Architecture]:
    out = dict(state)
    for i, index in enumerate(keep):
        if len(index) == arch.ffn_hidden_of(i):
            continue
        p = f"layers.{i}.feed_forward."
        out[p + "w1.weight"] = state[p + "w1.weight"].index_select(0, index)
        out[p + "w3.weight"] = state[p + "w3.weight"].index_select(0, index)
        out[p + "w2.weight"] = state[p + "w2.weight"].index_select(1, index)
    widths = tuple(len(index) for index in keep)
    if len(set(widths)) == 1:
        return out, arch.replace(ffn_hidden=widths[0], layer_ffn_hidden=None)
    return out, arch.replace(ffn_hidden=max(widths), layer_ffn_hidden=widths)
