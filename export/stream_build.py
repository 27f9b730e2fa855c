"""Build, score and quantize the model one part at a time, so its float32 weights never all exist at once.

For each part in order (embedding, every block, final norm + output layer) the checkpoint's tensors are
widened to float32, the reference activations of the evaluation tokens are pushed through the part,
the part is quantized, and the checkpoint's pages for it are handed back to the kernel. The peak is
then the quantized model plus one float32 part, instead of the whole float32 model plus the file:
Llama 3.2 3B is 12.8 GB in float32.
The reference logits are bit-identical to a forward pass of the whole float model: the same modules
run the same ops in the same order, only with a pause between blocks.

With a ``Rotation`` (export/rotation.py) each part's weights are rotated (norm scales folded) as they are
widened, before the reference passes through it and before it is quantized: the reference is then the
rotated float model's, equal to the checkpoint's up to float32 rounding (the rotation preserves the
function). Quantization (and any calibration inside ``quantize_part``) sees the rotated weights.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from llama_mobile.export.model import Transformer
from llama_mobile.export.pages import release_pages
from llama_mobile.export.rotation import Rotation

Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _assign(model: Transformer, prefix: str, state_dict: dict[str, torch.Tensor],
            transform: Transform | None = None) -> list:
    """Give the part its float32 weights (through ``transform`` when given: names relative to the part,
    float32 out); returns the checkpoint tensors it read."""
    module = model.get_submodule(prefix)
    names = [name for name, _ in module.named_parameters()]
    sources = [state_dict[f"{prefix}.{name}"] for name in names]
    tensors = dict(zip(names, sources))
    tensors = transform(tensors) if transform is not None else {n: t.to(torch.float32) for n, t in tensors.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    module.requires_grad_(False)
    return sources


@torch.no_grad()
def _run_block(model: Transformer, layer, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    """The block's output on each calibration sequence (each from position 0 of a fresh cache)."""
    outputs = []
    for hidden in sequences:
        cos, sin = model.rope_at(0, hidden.shape[1])
        outputs.append(layer(hidden, 0, cos, sin, model.rope_swap))
        layer.attention.k_cache.zero_()
        layer.attention.v_cache.zero_()
    return outputs


def fill_streaming(model: Transformer, state_dict: dict[str, torch.Tensor], *,
                   quantize_part: Callable[[str], None], token_ids: list[int] | None = None,
                   on_part: Callable[[str], None] = lambda part: None,
                   rotation: Rotation | None = None, calibration_ids: list[list[int]] | None = None,
                   observe: Callable[[str], contextlib.AbstractContextManager] | None = None) -> torch.Tensor | None:
    """Fill a ``skeleton`` with the checkpoint's weights; returns the reference logits [positions, vocab]
    of ``token_ids`` (None without them). ``quantize_part(prefix)`` quantizes what lies under the
    prefix, or nothing (float recipes). ``state_dict`` has Meta's names; a tied one has no output.weight.
    ``rotation`` rotates every part before it is scored and quantized; a tied model's skeleton then needs
    ``output_mix``.
    ``calibration_ids`` (sequences of tokens) run through each float block inside ``observe(prefix)``
    just before ``quantize_part(prefix)``: the block's input is the previous blocks' *quantized* output
    on them (GPTQ's sequential rule; the embedding lookup is the float one), so calibration corrects the
    error the block is really fed. Only the calibration activations are kept between blocks."""
    arch = model.arch
    tokens = torch.tensor([token_ids]) if token_ids else None
    hidden = None
    if (rotation is not None and rotation.mixes_output(arch.tied_embeddings)) != (model.output_mix is not None):
        raise ValueError("the skeleton needs output_mix exactly when R1 rotates a tied embedding/output matrix")

    sources = _assign(model, "tok_embeddings", state_dict,
                      rotation and (lambda t: {"weight": rotation.embedding(t["weight"])}))
    if tokens is not None:
        hidden = model.tok_embeddings(tokens)
    calibration = [model.tok_embeddings(torch.tensor([ids])) for ids in calibration_ids or []]
    if not arch.tied_embeddings:  # else the output layer's quantized matrix may serve the lookup too
        quantize_part("tok_embeddings")
        release_pages(sources)
    on_part("tok_embeddings")

    cos, sin = model.rope_at(0, tokens.shape[1]) if tokens is not None else (None, None)
    for index, layer in enumerate(model.layers):
        prefix = f"layers.{index}"
        sources = _assign(model, prefix, state_dict, rotation and rotation.block)
        if hidden is not None:
            hidden = layer(hidden, 0, cos, sin, model.rope_swap)
            layer.attention.k_cache.zero_()
            layer.attention.v_cache.zero_()
        if calibration:
            with observe(prefix):
                _run_block(model, layer, calibration)
        quantize_part(prefix)
        if calibration:
            calibration = _run_block(model, layer, calibration)
        release_pages(sources)
        on_part(prefix)

    if rotation is not None:  # the final norm's scale goes into the output layer, or output_mix when tied
        norm_weight = state_dict["norm.weight"]
        sources = _assign(model, "norm", state_dict, lambda t: {"weight": rotation.final_norm(t["weight"])})
        if model.output_mix is not None:
            model.output_mix.load_state_dict({"weight": rotation.output_mix(norm_weight)}, assign=True)
            model.output_mix.requires_grad_(False)
        if not arch.tied_embeddings:
            sources += _assign(model, "output", state_dict,
                               lambda t: {"weight": rotation.output(t["weight"], norm_weight)})
    else:
        sources = _assign(model, "norm", state_dict)
        if not arch.tied_embeddings:
            sources += _assign(model, "output", state_dict)
    if arch.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight
        sources += [state_dict["tok_embeddings.weight"]]
    reference = model.head(hidden)[0].float() if hidden is not None else None
    if model.output_mix is not None:
        quantize_part("output_mix")
    quantize_part("output")
    if arch.tied_embeddings:
        quantize_part("tok_embeddings")
    release_pages(sources)
    on_part("output")
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters never filled from the checkpoint: {left[:3]}")
    return reference
