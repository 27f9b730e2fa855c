"""LoRA adapters (PEFT's adapter_config.json + adapter_model.safetensors) read, checked against the base
model, and attached to it as low-rank branches that a program holds beside the shared base weights.

An adapter of rank r adds ``scale * B (A x)`` to a linear's output, A [r, in] and B [out, r], with
scale = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA). Hugging Face's q/k row order differs from the
Meta layout this project's model uses (RoPE), so B's rows of q_proj/k_proj are permuted like the weights.
Every check runs before any export work: names, shapes, rank, finite values. quantize/lora.py attaches them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import CheckpointError, UsageError
from llama_mobile.core.hashing import sha256_file
from llama_mobile.export.config_fields import read_json_object
from llama_mobile.export.hf_loader import hf_to_meta_rope
from llama_mobile.export.model import expected_shapes
from llama_mobile.export.pages import settle_file
from llama_mobile.export.tensor_names import BLOCK, MODEL_TENSOR

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# PEFT's target module name (the Hugging Face linear's last name) -> this model's block linear.
LINEAR_KINDS = (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V, MODEL_TENSOR.ATTN_OUT,
                MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_DOWN, MODEL_TENSOR.FFN_UP)
TARGETS = {BLOCK[kind][1].split(".")[-1]: BLOCK[kind][0] for kind in LINEAR_KINDS}
BLOCK_GROUP = {BLOCK[kind][0]: BLOCK[kind][1].split(".")[0] for kind in LINEAR_KINDS}  # "attention.wq" -> "self_attn"
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path  # the weights file
    rank: int
    alpha: float
    scale: float
    targets: tuple[str, ...]  # block linears, e.g. "attention.wq"
    # "layers.{i}.attention.wq" -> (A [rank, in], B [out, rank]) in float32, Meta row order
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    sha256: str

    def record(self) -> dict:
        """What the manifest says of it."""
        return {"name": self.name, "rank": self.rank, "alpha": self.alpha, "scale": self.scale,
                "targets": list(self.targets), "linears": len(self.weights), "source": self.path.name,
                "source_sha256": self.sha256}


def parse_adapter_option(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``export --adapter``."""
    name, sep, path = value.partition("=")
    if not sep or not path:
        raise UsageError(f"--adapter {value!r} is not NAME=PATH", fix="pass e.g. --adapter support=./support-lora")
    if not NAME_PATTERN.match(name):
        raise UsageError(f"adapter name {name!r} must be 1-64 letters, digits, '-' or '_' (it names files)",
                         fix="pass e.g. --adapter support=./support-lora")
    return name, Path(path)


def _files(path: Path) -> tuple[Path, Path]:
    """(config, weights) of a PEFT adapter folder, or of a weights file with its config beside it."""
    if path.is_dir():
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    if path.suffix == ".safetensors":
        return path.parent / CONFIG_NAME, path
    if path.exists():
        raise UsageError("an adapter is a PEFT folder or its .safetensors file", path=path,
                         fix=f"pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME} (no pickles are read)")
    raise UsageError("adapter not found", path=path, fix=f"pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")


def _config(path: Path) -> tuple[int, float, bool, tuple[str, ...]]:
    fix = "pass the adapter_config.json PEFT wrote for this adapter"
    data = read_json_object(path, missing=UsageError, invalid=CheckpointError, fix=fix)
    if data.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"peft_type {data.get('peft_type')!r} is not LORA", path=path, fix=fix)
    rank, alpha = data.get("r"), data.get("lora_alpha", data.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise CheckpointError(f"'r' must be a positive integer, not {rank!r}", path=path, fix=fix)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise CheckpointError(f"'lora_alpha' must be a positive number, not {alpha!r}", path=path, fix=fix)
    unsupported = [f"{key}={data[key]!r}" for key, plain in (("use_dora", False), ("fan_in_fan_out", False),
                                                            ("bias", "none")) if data.get(key, plain) != plain]
    if data.get("modules_to_save"):
        unsupported.append(f"modules_to_save={data['modules_to_save']!r}")
    if data.get("rank_pattern") or data.get("alpha_pattern"):
        unsupported.append("per-module rank_pattern/alpha_pattern")
    if unsupported:
        raise CheckpointError(f"unsupported LoRA setting {unsupported[0]}", path=path,
                              fix="export a plain LoRA adapter (low-rank A/B only), or merge it into the weights")
    targets = data.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise CheckpointError("'target_modules' must list the adapted linears", path=path, fix=fix)
    unknown = [t for t in targets if t.split(".")[-1] not in TARGETS]
    if unknown:
        raise CheckpointError(f"target module {unknown[0]!r} is not a linear of a Llama block "
                              f"({', '.join(TARGETS)})", path=path, fix="pass an adapter trained for a Llama model")
    asked = {TARGETS[t.split(".")[-1]] for t in targets}
    names = tuple(name for name in TARGETS.values() if name in asked)  # the block's order
    return rank, float(alpha), bool(data.get("use_rslora", False)), names


def read_adapter(name: str, path: Path, arch: Architecture) -> Adapter:
    """A PEFT LoRA adapter for ``arch``, checked whole: one-line errors for another architecture, a rank
    that is not the config's, a target module the base lacks, NaN or infinite weights."""
    config, weights_file = _files(Path(path))
    rank, alpha, rslora, targets = _config(config)
    if not weights_file.is_file():
        raise UsageError("adapter weights not found", path=weights_file,
                         fix=f"the adapter folder needs {WEIGHTS_NAME} (safetensors; pickles are not read)")
    settle_file(weights_file)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            for key in handle.keys():
                match = _KEY.match(key)
                if match is None:
                    raise CheckpointError(f"tensor {key!r} is not a LoRA A/B matrix of a Llama block linear",
                                          path=weights_file, fix="pass a plain PEFT LoRA adapter of a Llama model")
                layer, group, module, half = match.groups()
                if module not in TARGETS or BLOCK_GROUP[TARGETS[module]] != group:
                    raise CheckpointError(f"tensor {key!r} adapts {group}.{module}, which a Llama block does not have",
                                          path=weights_file, fix="pass an adapter trained for a Llama model")
                if int(layer) >= arch.n_layers:
                    raise CheckpointError(f"tensor {key!r} adapts layer {layer}; the base has {arch.n_layers}",
                                          path=weights_file, fix="pass an adapter trained for this base model")
                tensor = handle.get_tensor(key)
                if not tensor.is_floating_point():
                    raise CheckpointError(f"tensor {key!r} has dtype {tensor.dtype}, not a float type",
                                          path=weights_file, fix="pass the adapter as PEFT saved it")
                halves.setdefault(f"layers.{layer}.{TARGETS[module]}", {})[half] = tensor.to(torch.float32)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"cannot read safetensors ({exc})", path=weights_file,
                              fix="the file is truncated or corrupt: copy it again") from None
    if not halves:
        raise CheckpointError("holds no LoRA matrices", path=weights_file, fix="pass the adapter's weights file")
    shapes = expected_shapes(arch)
    pairs = {}
    for linear, pair in sorted(halves.items(), key=lambda item: _order(item[0])):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{linear} has lora_{'B' if 'A' in pair else 'A'} missing", path=weights_file,
                                  fix="pass the whole adapter")
        kind = linear.split(".", 2)[2]
        if kind not in targets:
            raise CheckpointError(f"{linear} is adapted but {kind} is not in target_modules", path=config,
                                  fix="pass the adapter_config.json that came with these weights")
        a, b = pair["A"], pair["B"]
        out_features, in_features = shapes[f"{linear}.weight"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_features or b.shape[0] != out_features:
            raise CheckpointError(f"{linear}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a "
                                  f"[{out_features}, {in_features}] linear: an adapter for another architecture",
                                  path=weights_file, fix="pass an adapter trained for this base model")
        if a.shape[0] != rank or b.shape[1] != rank:
            raise CheckpointError(f"{linear}: rank {a.shape[0]}/{b.shape[1]} is not the config's r = {rank}",
                                  path=weights_file, fix="pass the adapter_config.json that came with these weights")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise CheckpointError(f"{linear} holds NaN or infinite values", path=weights_file,
                                  fix="the adapter diverged in training or is corrupt: use another checkpoint")
        if kind == BLOCK[MODEL_TENSOR.ATTN_Q][0]:
            b = hf_to_meta_rope(b, arch.n_heads)
        elif kind == BLOCK[MODEL_TENSOR.ATTN_K][0]:
            b = hf_to_meta_rope(b, arch.n_kv_heads)
        pairs[linear] = (a.contiguous(), b.contiguous())
    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    return Adapter(name=name, path=weights_file, rank=rank, alpha=alpha, scale=scale, targets=targets,
                   weights=pairs, sha256=sha256_file(weights_file))


def _order(linear: str) -> tuple[int, str]:
    return int(linear.split(".")[1]), linear


def merged(state_dict: dict[str, torch.Tensor], adapter: Adapter) -> dict[str, torch.Tensor]:
    """The base's float weights with the adapter merged in (W + scale B A): the adapter's parity reference."""
    out = dict(state_dict)
    for linear, (a, b) in adapter.weights.items():
        key = f"{linear}.weight"
        out[key] = state_dict[key].to(torch.float32) + adapter.scale * (b @ a)
    return out
