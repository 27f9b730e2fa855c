"""Hugging Face folders: config.json + *.safetensors (one file or an index of shards) + tokenizer.json."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.core.errors import CheckpointError
from llama_mobile.core.presets import ModelPreset
from llama_mobile.export.config_fields import FieldReader, read_json_object
from llama_mobile.export.identity import checkpoint_jinja, resolve_identity
from llama_mobile.export.loaded import (
    HF_FORMAT,
    LoadedModel,
    check_against_preset,
    check_tensor,
    describe_sources,
)
from llama_mobile.export.pages import settle_file
from llama_mobile.export.tensor_names import HF, META, MODEL_TENSOR, rename

# Our own config.json section for shapes Hugging Face's LlamaConfig cannot express (pruned models).
PRUNING_SECTION = "llama_mobile"


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
    vocab = arch_fields["vocab_size"]
    bos = fields.get("bos_token_id", int, None)
    if bos is not None and not 0 <= bos < (vocab or 1 << 31):
        fields.fail(f"field 'bos_token_id' must be a token id below vocab_size, got {bos}")
    eos_ids = fields.token_ids("eos_token_id", vocab)
    fields.done(fix="restore config.json from the model download")
    return Architecture(**arch_fields).check(str(path)), bos, eos_ids


def _rope_scaling(scaling: dict, fields: FieldReader) -> RopeScaling | None:
    kind = scaling.get("rope_type", scaling.get("type"))
    if not isinstance(kind, (str, type(None))):
        fields.fail(f"rope_scaling type must be a string, got {type(kind).__name__}")
        return None
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        fields.fail(f"rope_scaling type {kind!r} is not supported (only 'llama3')")
        return None
    try:
        values = [scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                       "original_max_position_embeddings")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError("its values must be numbers")
        return RopeScaling(
            factor=float(values[0]), low_freq_factor=float(values[1]), high_freq_factor=float(values[2]),
            original_max_position=int(values[3]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        fields.fail(f"rope_scaling is incomplete ({exc})")
        return None


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        fix = "restore model.safetensors.index.json from the download"
        weight_map = read_json_object(index, invalid=CheckpointError, fix=fix).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError("invalid shard index: 'weight_map' must map tensor names to file names",
                                  path=index, fix=fix)
        names = sorted(set(weight_map.values()))
        for name in names:  # a shard is a file of this folder: no paths, no '..'
            if not name or Path(name).name != name or name in (".", ".."):
                raise CheckpointError(f"invalid shard index: {name!r} is not a file name in this folder",
                                      path=index, fix=fix)
        files = [folder / name for name in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError("no .safetensors weights", path=folder,
                              fix="download the safetensors weights (model.safetensors) into this folder")
    for file in files:
        if not file.is_file():
            raise CheckpointError("shard listed in the index is missing" if not file.exists() else
                                  "is not a file", path=file, fix="re-download it")
    return files


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:


    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        settle_file(file)
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    check_tensor(key, handle.get_slice(key).get_dtype(), file, HF_FORMAT)
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
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
        name = rename(key, HF, META)
        if name is not None:
            state[name] = tensor
        elif key.endswith("rotary_emb.inv_freq"):
            continue
        else:
            raise CheckpointError(f"unexpected tensor {key!r}", path=path,
                                  fix="this is not a Llama-architecture checkpoint")
    for name, tensor in list(state.items()):
        if tensor.dim() != 2:
            continue
        kind = META.kind(name)
        if kind is MODEL_TENSOR.ATTN_Q and tensor.shape[0] == arch.n_heads * arch.head_dim:
            state[name] = hf_to_meta_rope(tensor, arch.n_heads)
        elif kind is MODEL_TENSOR.ATTN_K and tensor.shape[0] == arch.n_kv_heads * arch.head_dim:
            state[name] = hf_to_meta_rope(tensor, arch.n_kv_heads)
    return state


def load_hf(folder: Path, preset: ModelPreset | None, preflight=None) -> LoadedModel:
    """preflight(architecture), when given, runs before any tensor is read (the memory preflight)."""
    config = folder / "config.json"
    arch, bos, eos_ids = architecture_from_config(config)
    if preset is not None:
        check_against_preset(arch, preset.architecture, config, preset.name)
    if preflight is not None:
        preflight(arch)
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
    specials, template = resolve_identity(preset, arch, bos, eos_ids, jinja=checkpoint_jinja(folder))
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
