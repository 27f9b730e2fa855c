"""Meta's native format: consolidated.00.pth + params.json + tokenizer.model (tiktoken)."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture, llama_ffn_hidden
from llama_mobile.core.errors import CheckpointError
from llama_mobile.core.presets import LLAMA3_ROPE, ModelPreset
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.config_fields import FieldReader, read_json_object
from llama_mobile.export.identity import resolve_identity
from llama_mobile.export.loaded import (
    META_FORMAT,
    META_QUANTIZED,
    LoadedModel,
    check_against_preset,
    check_tensor,
    describe_sources,
)
from llama_mobile.export.pages import settle_file
from llama_mobile.export.prequantized import meta_quantization_args, meta_quantized_state

# Keys some Meta checkpoints carry that the model does not use.
IGNORED_KEYS = {"rope.freqs"}


def architecture_from_params(path: Path) -> Architecture:
    fields = FieldReader(read_json_object(path), path)
    dim = fields.get("dim", int, positive=True)
    n_layers = fields.get("n_layers", int, positive=True)
    n_heads = fields.get("n_heads", int, positive=True)
    n_kv_heads = fields.get("n_kv_heads", int, n_heads, positive=True)
    vocab_size = fields.get("vocab_size", int, positive=True)
    multiple_of = fields.get("multiple_of", int, 256, positive=True)
    multiplier = fields.get("ffn_dim_multiplier", float, None)
    norm_eps = fields.get("norm_eps", float, 1e-5, positive=True)
    rope_theta = fields.get("rope_theta", float, 10000.0, positive=True)
    scaled = fields.get("use_scaled_rope", bool, False)
    fields.done(fix="restore params.json from the model download")
    arch = Architecture(
        dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        ffn_hidden=llama_ffn_hidden(dim, multiple_of, multiplier), vocab_size=vocab_size,
        rope_theta=rope_theta, norm_eps=norm_eps, rope_scaling=LLAMA3_ROPE if scaled else None,
        tied_embeddings=False, max_position=131072 if scaled else 8192,
    )
    return arch.check(str(path))


def find_weights(folder: Path) -> Path:
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError("no consolidated.00.pth", path=folder,
                              fix="download the original (Meta) checkpoint, or pass a Hugging Face folder")
    if len(shards) > 1:
        raise CheckpointError(f"{len(shards)} model-parallel shards; only single-file checkpoints are "
                              "supported", path=folder, fix="use the 1B/3B checkpoints, which are one file")
    return shards[0]


def read_pth(path: Path, fmt: str = META_FORMAT) -> dict[str, torch.Tensor]:
    """Never unpickles code: weights_only refuses any global that is not a tensor type."""

    if not path.is_file():
        raise CheckpointError("is not a file", path=path, fix="pass Meta's consolidated.00.pth as downloaded")
    if path.stat().st_size == 0:
        raise CheckpointError("is empty (0 bytes)", path=path, fix="the download was interrupted: re-download it")
    settle_file(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            # Legacy (pre-zip) torch.save format: no mmap, still weights_only.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise CheckpointError(f"refused to load: the pickle holds code or non-tensor objects ({first_line})",
                              path=path, fix="only load checkpoints from a source you trust; "
                                             "re-download the original file") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a truncated, empty or foreign file
        lines = str(exc).strip().splitlines()
        raise CheckpointError(f"cannot read the .pth file ({type(exc).__name__}: {lines[0][:200] if lines else 'empty'})",
                              path=path, fix="the file is empty, truncated or corrupt: re-download it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("does not hold a flat dict of tensors", path=path,
                              fix="pass Meta's consolidated.00.pth as downloaded")
    for name, tensor in state.items():
        check_tensor(name, tensor.dtype, path, fmt, is_meta=tensor.is_meta)
    return state


def load_meta(folder: Path, preset: ModelPreset | None, preflight=None) -> LoadedModel:
    """preflight(architecture), when given, runs before any tensor is read (the memory preflight)."""
    params = folder / "params.json"
    arch = architecture_from_params(params)
    if preset is not None:
        check_against_preset(arch, preset.architecture, params, preset.name)
    if preflight is not None:
        preflight(arch)
    tokenizer = folder / "tokenizer.model"
    if not tokenizer.exists():
        raise CheckpointError("tokenizer.model not found", path=folder,
                              fix="copy tokenizer.model from the original download into this folder")
    weights = find_weights(folder)
    quantized = meta_quantization_args(read_json_object(params), params)  # Meta's quantized Llama 3.2 releases
    state = {k: v for k, v in read_pth(weights, META_QUANTIZED if quantized else META_FORMAT).items()
             if k not in IGNORED_KEYS}
    prequantized, quantization = {}, {}
    if quantized:  # integers and scales kept as records; the state gets the float model of them
        state, prequantized, quantization = meta_quantized_state(state, quantized, weights)
    output, embedding = state.get("output.weight"), state.get("tok_embeddings.weight")
    tied = output is None or (embedding is not None and output.shape == embedding.shape
                              and output.dtype == embedding.dtype and torch.equal(output, embedding))
    if tied:
        state.pop("output.weight", None)
        prequantized.pop("output.weight", None)
    arch = arch.replace(tied_embeddings=tied)
    if preset is not None:
        arch = arch.replace(max_position=preset.architecture.max_position)
    bos_id = eos_ids = None
    if preset is None:  # a generic checkpoint: the tokenizer knows its own special tokens

        tok = Tokenizer(tokenizer)
        bos_id, eos_ids = tok.bos_id, (tok.eos_id,)
    specials, template = resolve_identity(preset, arch, bos_id=bos_id, eos_ids=eos_ids)
    return LoadedModel(
        preset=preset.name if preset else "llama", architecture=arch, state_dict=state,
        tokenizer_path=tokenizer, specials=specials, chat_template=template,
        task=preset.task if preset else "chat", source_format=META_FORMAT,
        sources=describe_sources([params, weights, tokenizer]), prequantized=prequantized,
        quantization=quantization,
    )
