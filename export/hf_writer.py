"""Write a Meta-named state dict as a Hugging Face folder the HF loader reads back (the inverse of hf_loader).

Shapes Hugging Face's LlamaConfig cannot express (per-layer MLP widths, a pruned output vocabulary,
a head_dim with fewer heads than dim implies) go into config.json's `llama_mobile` section.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import write_file
from llama_mobile.core.errors import OutputError
from llama_mobile.export.hf_loader import PRUNING_SECTION, meta_to_hf_rope
from llama_mobile.export.tensor_names import HF, META, MODEL_TENSOR

# Files beside a Hugging Face tokenizer that transformers reads with it.
TOKENIZER_SIDECARS = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
DTYPES = {"fp32": (torch.float32, "float32"), "bf16": (torch.bfloat16, "bfloat16")}


def hf_config(arch: Architecture, bos_id: int, eos_ids: tuple[int, ...], dtype: str, section: dict) -> dict:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": arch.dim,
              "num_hidden_layers": arch.n_layers, "num_attention_heads": arch.n_heads,
              "num_key_value_heads": arch.n_kv_heads, "head_dim": arch.head_dim,
              "intermediate_size": arch.ffn_hidden, "vocab_size": arch.vocab_size, "rope_theta": arch.rope_theta,
              "rms_norm_eps": arch.norm_eps, "tie_word_embeddings": arch.tied_embeddings,
              "max_position_embeddings": arch.max_position, "bos_token_id": bos_id, "eos_token_id": list(eos_ids),
              "hidden_act": "silu", "torch_dtype": DTYPES[dtype][1]}
    if arch.rope_scaling:
        s = arch.rope_scaling
        config["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                                  "high_freq_factor": s.high_freq_factor,
                                  "original_max_position_embeddings": s.original_max_position}
    config[PRUNING_SECTION] = {
        "layer_ffn_hidden": list(arch.layer_ffn_hidden) if arch.layer_ffn_hidden else None,
        "output_token_ids": list(arch.output_token_ids) if arch.output_token_ids else None,
        "attn_head_dim": arch.attn_head_dim, **section,
    }
    return config


def hf_tensors(arch: Architecture, state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    torch_dtype = DTYPES[dtype][0]
    tensors = {}
    for name, tensor in state.items():
        kind, block = META.split(name)
        if kind is MODEL_TENSOR.OUTPUT and arch.tied_embeddings:
            continue
        if kind is MODEL_TENSOR.ATTN_Q:
            tensor = meta_to_hf_rope(tensor, arch.n_heads)
        elif kind is MODEL_TENSOR.ATTN_K:
            tensor = meta_to_hf_rope(tensor, arch.n_kv_heads)
        tensors[HF.name(kind, block)] = tensor.detach().to(torch_dtype).contiguous()
    return tensors


def write_hf_checkpoint(folder: Path, arch: Architecture, state: dict[str, torch.Tensor], *,
                        tokenizer_path: Path, bos_id: int, eos_ids: tuple[int, ...], dtype: str = "fp32",
                        section: dict | None = None) -> list[Path]:
    """Into an existing (staging) folder: config.json, model.safetensors, the tokenizer files."""

    folder = Path(folder)
    config = hf_config(arch, bos_id, eos_ids, dtype, section or {})
    write_file(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    try:
        save_file(hf_tensors(arch, state, dtype), str(folder / "model.safetensors"), metadata={"format": "pt"})
        written = [folder / "config.json", folder / "model.safetensors"]
        tokenizer_path = Path(tokenizer_path)
        for source in (tokenizer_path, *(tokenizer_path.parent / n for n in TOKENIZER_SIDECARS)):
            if source.is_file():
                shutil.copyfile(source, folder / source.name)
                written.append(folder / source.name)
    except OSError as exc:
        raise OutputError(f"cannot write the checkpoint ({exc.strerror or exc})", path=folder,
                          fix="check free space and permissions of the -o folder") from None
    return written
