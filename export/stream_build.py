"""Build, score and quantize the model one part at a time, so its float32 weights never all exist at once.

For each part in order (embedding, every block, final norm + output layer) the checkpoint's tensors are
widened to float32, the reference activations of the evaluation tokens are pushed through the part,
the part is quantized, and the checkpoint's pages for it are handed back to the kernel. The peak is
then the quantized model plus one float32 part, instead of the whole float32 model plus the file:
Llama 3.2 3B is 12.8 GB in float32.
The reference logits are bit-identical to a forward pass of the whole float model: the same modules
run the same ops in the same order, only with a pause between blocks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from llama_mobile.export.model import Transformer
from llama_mobile.export.pages import release_pages


def _assign(model: Transformer, prefix: str, state_dict: dict[str, torch.Tensor]) -> list:
    """Give the part its float32 weights; returns the checkpoint tensors it read."""
    module = model.get_submodule(prefix)
    names = [name for name, _ in module.named_parameters()]
    sources = [state_dict[f"{prefix}.{name}"] for name in names]
    module.load_state_dict({name: t.to(torch.float32) for name, t in zip(names, sources)}, strict=True, assign=True)
    module.requires_grad_(False)
    return sources


def fill_streaming(model: Transformer, state_dict: dict[str, torch.Tensor], *,
                   quantize_part: Callable[[str], None], token_ids: list[int] | None = None,
                   on_part: Callable[[str], None] = lambda part: None) -> torch.Tensor | None:
    """Fill a ``skeleton`` with the checkpoint's weights; returns the reference logits [positions, vocab]
    of ``token_ids`` (None without them). ``quantize_part(prefix)`` quantizes what lies under the
    prefix, or nothing (float recipes). ``state_dict`` has Meta's names; a tied one has no output.weight."""
    arch = model.arch
    tokens = torch.tensor([token_ids]) if token_ids else None
    hidden = None

    sources = _assign(model, "tok_embeddings", state_dict)
    if tokens is not None:
        hidden = model.tok_embeddings(tokens)
    if not arch.tied_embeddings:  # else the output layer's quantized matrix may serve the lookup too
        quantize_part("tok_embeddings")
        release_pages(sources)
    on_part("tok_embeddings")

    cos, sin = model.rope_at(0, tokens.shape[1]) if tokens is not None else (None, None)
    for index, layer in enumerate(model.layers):
        prefix = f"layers.{index}"
        sources = _assign(model, prefix, state_dict)
        if hidden is not None:
            hidden = layer(hidden, 0, cos, sin, model.rope_swap)
            layer.attention.k_cache.zero_()
            layer.attention.v_cache.zero_()
        quantize_part(prefix)
        release_pages(sources)
        on_part(prefix)

    sources = _assign(model, "norm", state_dict)
    if arch.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight
        sources += [state_dict["tok_embeddings.weight"]]
    else:
        sources += _assign(model, "output", state_dict)
    reference = model.head(hidden)[0].float() if hidden is not None else None
    quantize_part("output")
    if arch.tied_embeddings:
        quantize_part("tok_embeddings")
    release_pages(sources)
    on_part("output")
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters never filled from the checkpoint: {left[:3]}")
    return reference
