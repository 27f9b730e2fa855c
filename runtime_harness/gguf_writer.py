"""A GGUF of a checkpoint's own weights, for the llama.cpp side of `bench` when the bundle came from a
Meta or Hugging Face checkpoint.

llama.cpp's convert_hf_to_gguf.py ships in no wheel, so this writes what it writes for a Llama model,
with llama.cpp's own GGUF library (gguf-py): architecture "llama", Meta's interleaved q/k rows (GGUF's
layout, so no permutation), F16 matrices and F32 norms, the llama3 RoPE factors as `rope_freqs`, and a
byte-level BPE vocabulary with the `llama-bpe` pre-tokenizer. llama.cpp's quantizer then makes the
Q4_0/Q8_0 peer from it (gguf_peer.requantize).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import TokenType

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import temporary_path
from llama_mobile.core.errors import UsageError
from llama_mobile.core.tokenizer import (
    HF_JSON,
    byte_level,
    tiktoken_token_bytes,
    tokenizer_kind,
)
from llama_mobile.export.loaded import LoadedModel
from llama_mobile.export.model import rope_scale_factors
from llama_mobile.export.pages import release_pages
from llama_mobile.export.tensor_names import GGUF, GGUF_ARCH, META, MODEL_TENSOR, ROPE_FREQS

LLAMA3_VOCAB = 128256  # the vocabularies llama.cpp's "llama-bpe" pre-tokenizer is for
TOKEN_NORMAL, TOKEN_CONTROL = int(TokenType.NORMAL), int(TokenType.CONTROL)


@dataclass
class Vocabulary:
    tokens: list[str]  # GPT-2 byte-level strings; special tokens as written
    types: list[int]
    merges: list[str]  # "left right", in merge order


def tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of a token into two tokens, in the order of the token's rank (then of the pieces').

    The same list as transformers' TikTokenConverter, which made Hugging Face's Llama 3 tokenizer.json
    (280,147 merges): more pairs than BPE strictly needs, and the merges any split reaches.
    """
    merges = []
    for token, rank in ranks.items():
        local = [(token[:i], token[i:]) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges.extend((rank, left, right) for left, right in local)
    merges.sort(key=lambda merge: merge[0])
    return [(left, right) for _, left, right in merges]


def tiktoken_vocabulary(path: Path, vocab_size: int, special_names: dict[str, int]) -> Vocabulary:
    """Tokens and merges of a tiktoken file (ranks are merge order), then the special tokens above it."""
    by_rank = tiktoken_token_bytes(path)
    ranks = {token: rank for rank, token in by_rank.items()}
    tokens = [byte_level(by_rank[rank]) for rank in sorted(by_rank)]
    regular = len(tokens)
    merges = [f"{byte_level(left)} {byte_level(right)}" for left, right in tiktoken_merges(ranks)]
    names = {token_id: name for name, token_id in special_names.items()}
    types = [TOKEN_NORMAL] * len(tokens)
    for token_id in range(regular, vocab_size):
        tokens.append(names.get(token_id, f"<|reserved_special_token_{token_id - regular}|>"))
        types.append(TOKEN_CONTROL)
    return Vocabulary(tokens, types, merges)


def hf_vocabulary(path: Path, vocab_size: int) -> Vocabulary:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UsageError(f"{path.name} is a {model.get('type')} tokenizer; only BPE converts here",
                         fix="convert the checkpoint with llama.cpp's convert_hf_to_gguf.py and pass --gguf FILE")
    tokens = [""] * vocab_size
    types = [TOKEN_NORMAL] * vocab_size
    # Ids past the model's vocabulary (transformers' GGUF converter appends an <|endoftext|>) have no
    # embedding row: the model can never produce or read them.
    for token, token_id in model["vocab"].items():
        if token_id < vocab_size:
            tokens[token_id] = token
    for added in data.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocabulary(tokens, types, merges)


def vocabulary(loaded: LoadedModel) -> Vocabulary:
    size = loaded.architecture.vocab_size
    if size != LLAMA3_VOCAB:
        raise UsageError(f"only Llama 3's {LLAMA3_VOCAB}-token vocabulary converts here (this one has {size})",
                         fix="convert the checkpoint with llama.cpp's convert_hf_to_gguf.py and pass --gguf FILE")
    if tokenizer_kind(loaded.tokenizer_path) == HF_JSON:
        return hf_vocabulary(loaded.tokenizer_path, size)
    return tiktoken_vocabulary(loaded.tokenizer_path, size, loaded.specials.names)


def check_convertible(arch: Architecture) -> None:
    if arch.layer_ffn_hidden or arch.output_token_ids or arch.attn_head_dim:
        raise UsageError("llama.cpp's llama architecture has no per-layer MLP widths, pruned heads or "
                         "pruned output rows", fix="benchmark the unpruned checkpoint against llama.cpp")


def write_gguf(loaded: LoadedModel, destination: Path, name: str = "llama-mobile peer") -> Path:
    """Write `loaded` as an F16 GGUF (norms and RoPE factors in F32), atomically."""

    arch = loaded.architecture
    check_convertible(arch)
    vocab = vocabulary(loaded)
    with temporary_path(destination) as partial:
        writer = gguf.GGUFWriter(str(partial), GGUF_ARCH)
        writer.add_name(name)
        writer.add_context_length(arch.max_position)
        writer.add_embedding_length(arch.dim)
        writer.add_block_count(arch.n_layers)
        writer.add_feed_forward_length(arch.ffn_hidden)
        writer.add_head_count(arch.n_heads)
        writer.add_head_count_kv(arch.n_kv_heads)
        writer.add_rope_freq_base(arch.rope_theta)
        writer.add_rope_dimension_count(arch.head_dim)
        writer.add_layer_norm_rms_eps(arch.norm_eps)
        writer.add_vocab_size(arch.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_merges(vocab.merges)
        writer.add_bos_token_id(loaded.specials.bos_id)
        writer.add_eos_token_id(loaded.specials.eos_ids[-1])
        writer.add_add_bos_token(True)
        # Tensors go to the file one at a time (gguf-py's add_tensor would hold every converted array
        # until the end: 2x the checkpoint in RSS), and each source tensor's pages are handed back
        # once written.
        tensors = []
        if arch.rope_scaling is not None:
            factors = rope_scale_factors(arch.head_dim, arch.rope_theta, arch.rope_scaling)
            tensors.append((ROPE_FREQS, factors.float()))
        for meta_name, tensor in loaded.state_dict.items():
            kind, block = META.split(meta_name)
            if kind is MODEL_TENSOR.OUTPUT and arch.tied_embeddings:
                continue  # llama.cpp reads token_embd when the output layer is absent
            tensors.append((GGUF.name(kind, block), tensor))
        for name, tensor in tensors:
            dtype = np.float32 if tensor.dim() == 1 else np.float16
            writer.add_tensor_info(name, tuple(tensor.shape), np.dtype(dtype),
                                   tensor.numel() * np.dtype(dtype).itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, tensor in tensors:
            converted = tensor.to(torch.float32 if tensor.dim() == 1 else torch.float16)
            writer.write_tensor_data(converted.numpy())
            release_pages([tensor])
        writer.close()
    return destination
