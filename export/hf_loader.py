"""Hugging Face folders: config.json + *.safetensors (one file or an index of shards) + tokenizer.json."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.core.errors import CheckpointError
from llama_mobile.core.presets import ModelPreset
from llama_mobile.export.config_fields import FieldReader, read_json_object
from llama_mobile.export.identity import resolve_identity
from llama_mobile.export.loaded import (
    HF_FORMAT,
    LoadedModel,
    check_against_preset,
    describe_sources,
)
from llama_mobile.export.pages import settle_file

# Our own config.json section for shapes Hugging Face's LlamaConfig cannot express (pruned models).
PRUNING_SECTION = "llama_mobile"

_LAYER_KEYS = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_KEYS = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


def architecture_from_config(path: Path) -> tuple[Architecture, int | None, tuple[int, ...] | None]:
    """The architecture plus the config's bos and eos ids."""
    data = read_json_object(path)
    fields = FieldReader(data, path)
    model_type = fields.get("model_type", str, "llama")
    if model_type not in ("llama",):
        fields.fail(f"model_type {model_type!r} is not a Llama architecture")
    dim = fields.get("hidden_size", int, positive=True)
    n_heads = fields.get("num_attention_heads", int, positive=True)
    arch_fields = dict(
        dim=dim,
        n_layers=fields.get("num_hidden_layers", int, positive=True),
        n_heads=n_heads,
        n_kv_heads=fields.get("num_key_value_heads", int, n_heads, positive=True),
        ffn_hidden=fields.get("intermediate_size", int, positive=True),
        vocab_size=fields.get("vocab_size", int, positive=True),
        rope_theta=fields.get("rope_theta", float, 10000.0, positive=True),
        norm_eps=fields.get("rms_norm_eps", float, 1e-5, positive=True),
        tied_embeddings=fields.get("tie_word_embeddings", bool, False),
        max_position=fields.get("max_position_embeddings", int, 8192, positive=True),
    )
    head_dim = fields.get("head_dim", int, None, positive=True)
    pruned = fields.get(PRUNING_SECTION, dict, {}) or {}
    if head_dim is not None and dim and n_heads and head_dim * n_heads != dim:
        if pruned.get("attn_head_dim") == head_dim:  # attention heads were pruned: dim stays, heads shrink
            arch_fields["attn_head_dim"] = head_dim
        else:
            fields.fail(f"head_dim={head_dim} times num_attention_heads={n_heads} is not hidden_size={dim}")
    scaling = fields.get("rope_scaling", dict, None)
    if scaling is not None:
        arch_fields["rope_scaling"] = _rope_scaling(scaling, fields)
    for key in ("layer_ffn_hidden", "output_token_ids"):
        if pruned.get(key) is not None:
            if not isinstance(pruned[key], list) or not all(isinstance(v, int) for v in pruned[key]):
                fields.fail(f"{PRUNING_SECTION}.{key} must be a list of integers")
            else:
                arch_fields[key] = tuple(pruned[key])
    bos = fields.get("bos_token_id", int, None)
    eos = fields.get("eos_token_id", (int, list), None)
    fields.done(fix="restore config.json from the model download")
    eos_ids = (eos,) if isinstance(eos, int) else tuple(eos) if eos else None
    return Architecture(**arch_fields).check(str(path)), bos, eos_ids


def _rope_scaling(scaling: dict, fields: FieldReader) -> RopeScaling | None:
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        fields.fail(f"rope_scaling type {kind!r} is not supported (only 'llama3')")
        return None
    try:
        return RopeScaling(
            factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position=int(scaling["original_max_position_embeddings"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        fields.fail(f"rope_scaling is incomplete ({exc})")
        return None


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError("invalid shard index", path=index, fix="restore it from the download") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError("no .safetensors weights", path=folder,
                              fix="download the safetensors weights (model.safetensors) into this folder")
    for file in files:
        if not file.exists():
            raise CheckpointError("shard listed in the index is missing", path=file, fix="re-download it")
    return files


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open


    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        settle_file(file)
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read safetensors ({exc})", path=file,
                                  fix="the file is truncated or corrupt: re-download it") from None
    return tensors


def hf_to_meta_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo the q/k row permutation Hugging Face's converter applies (rotate-half -> interleaved)."""
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_to_hf_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rename_hf(tensors: dict[str, torch.Tensor], arch: Architecture, path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key in _TOP_KEYS:
            state[_TOP_KEYS[key]] = tensor
            continue
        match = _LAYER_RE.fullmatch(key)
        if match and match.group(2) in _LAYER_KEYS:
            state[f"layers.{match.group(1)}.{_LAYER_KEYS[match.group(2)]}"] = tensor
        elif key.endswith("rotary_emb.inv_freq"):
            continue
        else:
            raise CheckpointError(f"unexpected tensor {key!r}", path=path,
                                  fix="this is not a Llama-architecture checkpoint")
    for name, tensor in list(state.items()):
        if tensor.dim() != 2:
            continue
        if name.endswith("attention.wq.weight") and tensor.shape[0] == arch.n_heads * arch.head_dim:
            state[name] = hf_to_meta_rope(tensor, arch.n_heads)
        elif name.endswith("attention.wk.weight") and tensor.shape[0] == arch.n_kv_heads * arch.head_dim:
            state[name] = hf_to_meta_rope(tensor, arch.n_kv_heads)
    return state


def load_hf(folder: Path, preset: ModelPreset | None) -> LoadedModel:
    config = folder / "config.json"
    arch, bos, eos_ids = architecture_from_config(config)
    if preset is not None:
        check_against_preset(arch, preset.architecture, config, preset.name)
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.exists() and (folder / "tokenizer.model").exists():
        tokenizer = folder / "tokenizer.model"  # a pruned Meta-format model keeps Meta's tiktoken file
    if not tokenizer.exists():
        raise CheckpointError("tokenizer.json not found", path=folder,
                              fix="download tokenizer.json with the model into this folder")
    files = safetensors_files(folder)
    state = rename_hf(read_safetensors(files), arch, folder)
    if arch.tied_embeddings:
        state.pop("output.weight", None)
    elif "output.weight" not in state:
        arch = arch.replace(tied_embeddings=True)
    specials, template = resolve_identity(preset, arch, bos, eos_ids)
    written_by_us = pruned_identity(config)
    return LoadedModel(
        preset=preset.name if preset else written_by_us.get("name", "llama"), architecture=arch,
        state_dict=state, tokenizer_path=tokenizer, specials=specials, chat_template=template,
        task=preset.task if preset else written_by_us.get("task", "chat"), source_format=HF_FORMAT,
        sources=describe_sources([config, *files, tokenizer]), history=written_by_us.get("history", []),
    )


def pruned_identity(config: Path) -> dict:
    """Name, task and history a pruned checkpoint carries in its llama_mobile section (checked types)."""
    section = read_json_object(config).get(PRUNING_SECTION)
    if not isinstance(section, dict):
        return {}
    found = {}
    if isinstance(section.get("name"), str):
        found["name"] = section["name"]
    if section.get("task") in ("chat", "guard"):
        found["task"] = section["task"]
    history = section.get("history")
    if isinstance(history, list) and all(isinstance(h, dict) for h in history):
        found["history"] = history
    return found
