"""Tensor names in Meta's checkpoints (which this project's model uses too), Hugging Face's and GGUF's: one
table, every direction derived from it.

Tensors are gguf-py's MODEL_TENSOR kinds; their GGUF names are gguf-py's own TENSOR_NAMES (llama.cpp's
tensor map for LLM_ARCH_LLAMA). A block's names carry its index where the table writes {bid}.
tests/test_tensor_names.py checks the Meta and Hugging Face columns against gguf-py's TensorNameMap.
"""
from __future__ import annotations

import re

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES

WEIGHT = ".weight"
GGUF_ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]  # "llama": general.architecture, and {arch} in gguf.Keys
ROPE_FREQS = TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + WEIGHT  # GGUF only: llama3 RoPE scaling as factors

# Kind: (Meta name, Hugging Face name), in the model's order (a block's rows follow the top rows).
TOP = {
    MODEL_TENSOR.TOKEN_EMBD: ("tok_embeddings", "model.embed_tokens"),
    MODEL_TENSOR.OUTPUT_NORM: ("norm", "model.norm"),
    MODEL_TENSOR.OUTPUT: ("output", "lm_head"),
}
BLOCK = {
    MODEL_TENSOR.ATTN_Q: ("attention.wq", "self_attn.q_proj"),
    MODEL_TENSOR.ATTN_K: ("attention.wk", "self_attn.k_proj"),
    MODEL_TENSOR.ATTN_V: ("attention.wv", "self_attn.v_proj"),
    MODEL_TENSOR.ATTN_OUT: ("attention.wo", "self_attn.o_proj"),
    MODEL_TENSOR.FFN_GATE: ("feed_forward.w1", "mlp.gate_proj"),
    MODEL_TENSOR.FFN_DOWN: ("feed_forward.w2", "mlp.down_proj"),
    MODEL_TENSOR.FFN_UP: ("feed_forward.w3", "mlp.up_proj"),
    MODEL_TENSOR.ATTN_NORM: ("attention_norm", "input_layernorm"),
    MODEL_TENSOR.FFN_NORM: ("ffn_norm", "post_attention_layernorm"),
}
META_BLOCK, HF_BLOCK = "layers.{bid}.", "model.layers.{bid}."
_INDEX = re.compile(r"\.(\d+)\.")  # a block's index: the first number between dots


class Naming:
    """One format's names: kind (and block index) -> name, and back."""

    def __init__(self, label: str, templates: dict[MODEL_TENSOR, str]):
        self.label = label
        self.templates = templates  # "{bid}" where a block's index goes; ".weight" included
        self._kinds = {template: kind for kind, template in templates.items()}

    def name(self, kind: MODEL_TENSOR, bid: int | str | None = None) -> str:
        return self.templates[kind].format(bid=bid)

    def parse(self, name: str) -> tuple[MODEL_TENSOR, str | None] | None:
        """(kind, block index as written) of a name, or None for a name outside the table."""
        match = _INDEX.search(name)
        if match:
            kind = self._kinds.get(f"{name[:match.start()]}.{{bid}}.{name[match.end():]}")
            if kind is not None:
                return kind, match.group(1)
        kind = self._kinds.get(name)
        return None if kind is None or kind in BLOCK else (kind, None)

    def split(self, name: str) -> tuple[MODEL_TENSOR, str | None]:
        """parse() of a name the table must know: KeyError for any other."""
        parsed = self.parse(name)
        if parsed is None:
            raise KeyError(f"{name!r} is no {self.label} tensor name of a Llama model")
        return parsed

    def kind(self, name: str) -> MODEL_TENSOR | None:
        parsed = self.parse(name)
        return parsed[0] if parsed else None

    def names(self, n_layers: int) -> list[tuple[MODEL_TENSOR, str]]:
        """Every tensor of an n_layers model as (kind, name): the top ones, then block by block."""
        return [(kind, self.name(kind)) for kind in TOP] + [
            (kind, self.name(kind, i)) for i in range(n_layers) for kind in BLOCK]


META = Naming("Meta", {**{k: meta + WEIGHT for k, (meta, _) in TOP.items()},
                       **{k: META_BLOCK + meta + WEIGHT for k, (meta, _) in BLOCK.items()}})
HF = Naming("Hugging Face", {**{k: hf + WEIGHT for k, (_, hf) in TOP.items()},
                             **{k: HF_BLOCK + hf + WEIGHT for k, (_, hf) in BLOCK.items()}})
GGUF = Naming("GGUF", {k: TENSOR_NAMES[k] + WEIGHT for k in (*TOP, *BLOCK)})


def rename(name: str, source: Naming, target: Naming) -> str | None:
    """`name` in `source`'s names as `target` names it; None when the table has no such tensor."""
    parsed = source.parse(name)
    return None if parsed is None else target.name(*parsed)
