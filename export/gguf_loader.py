"""GGUF files (llama.cpp's format), dequantized to float32. The embedded default model comes this way.

llama.cpp's converter already stores q/k rows in Meta's interleaved RoPE layout, so no permutation
is needed. The tokenizer is rebuilt as a Hugging Face tokenizer.json, which ExecuTorch's runner reads.
"""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.core.errors import CheckpointError, ConfigError, TokenizerError
from llama_mobile.core.presets import ModelPreset
from llama_mobile.export.identity import resolve_identity
from llama_mobile.export.loaded import (
    GGUF_FORMAT,
    LoadedModel,
    check_against_preset,
    describe_sources,
)
from llama_mobile.export.model import rope_scale_factors

log = logging.getLogger(__name__)

_LAYER_KEYS = {
    "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
    "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
}
_TOP_KEYS = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
ROPE_FREQS = "rope_freqs.weight"
_NAME_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


@contextlib.contextmanager
def plain_array_mapping():
    """gguf-py's reader slices its np.memmap once per field element (~500,000 times for a 49K-token
    vocabulary), and every memmap slice runs memmap's Python __array_finalize__: 3x slower than
    slicing a plain ndarray view of the same mapping. Pages stay mapped from the file either way."""
    import types

    import gguf.gguf_reader as reader_module

    numpy = reader_module.np
    plain = types.SimpleNamespace(**{name: getattr(numpy, name) for name in dir(numpy) if not name.startswith("__")})
    plain.memmap = lambda *args, **kwargs: numpy.memmap(*args, **kwargs).view(numpy.ndarray)
    reader_module.np = plain
    try:
        yield
    finally:
        reader_module.np = numpy


def open_gguf(path: Path):
    import gguf

    try:
        with plain_array_mapping():
            return gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise CheckpointError(f"cannot read GGUF ({exc})", path=path,
                              fix="the file is truncated or not GGUF: re-download it") from None


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _shortest_float32(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 comes back as 9.99999974e-06 unless rounded like this."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def rope_scaling_of(reader, head_dim: int, theta: float, path: Path) -> RopeScaling | None:
    """llama.cpp keeps Llama 3.1's RoPE scaling as per-frequency factors (`rope_freqs`), not its parameters:
    recover them, and refuse factors that Llama 3's scaling with its published constants does not give."""

    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return None
    factors = torch.from_numpy(np.asarray(tensor.data, dtype=np.float32).reshape(-1).copy())
    scaling = RopeScaling(factor=float(factors.max()))
    expected = rope_scale_factors(head_dim, theta, scaling)
    if factors.shape != expected.shape or not torch.allclose(factors, expected, rtol=1e-3):
        raise ConfigError([f"{ROPE_FREQS} is not Llama 3's RoPE scaling (factor {scaling.factor:g}, "
                           f"original context {scaling.original_max_position})"], path=path,
                          fix="convert a Llama 3.x model with llama.cpp, or a model without RoPE scaling")
    return scaling


def architecture_from_gguf(reader, path: Path) -> tuple[Architecture, int | None, tuple[int, ...] | None]:
    problems = []
    if _field(reader, "general.architecture", None) != "llama":
        problems.append(f"general.architecture is {_field(reader, 'general.architecture', None)!r}, not 'llama'")
    values = {}
    for name, key in (("dim", "llama.embedding_length"), ("n_layers", "llama.block_count"),
                      ("n_heads", "llama.attention.head_count"), ("ffn_hidden", "llama.feed_forward_length")):
        value = _field(reader, key, None)
        if value is None:
            problems.append(f"missing GGUF key {key!r}")
        values[name] = value
    if problems:
        raise ConfigError(problems, path=path, fix="convert a Llama-architecture model with llama.cpp")
    tokens = _field(reader, "tokenizer.ggml.tokens", None)
    vocab = _field(reader, "llama.vocab_size", None) or (len(tokens) if tokens else None)
    names = {t.name for t in reader.tensors}
    head_dim = int(values["dim"]) // int(values["n_heads"])
    theta = float(_field(reader, "llama.rope.freq_base", 10000.0))
    arch = Architecture(
        dim=int(values["dim"]), n_layers=int(values["n_layers"]), n_heads=int(values["n_heads"]),
        n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", values["n_heads"])),
        ffn_hidden=int(values["ffn_hidden"]), vocab_size=int(vocab or 0),
        rope_theta=theta, rope_scaling=rope_scaling_of(reader, head_dim, theta, path),
        norm_eps=_shortest_float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tied_embeddings="output.weight" not in names,
        max_position=int(_field(reader, "llama.context_length", 8192)),
    )
    bos = _field(reader, "tokenizer.ggml.bos_token_id", None)
    eos = _field(reader, "tokenizer.ggml.eos_token_id", None)
    return arch.check(str(path)), bos, (int(eos),) if eos is not None else None


def read_tensors(reader, path: Path) -> dict[str, torch.Tensor]:
    import gguf

    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue  # read into the architecture
        match = _NAME_RE.fullmatch(tensor.name)
        if match and match.group(2) in _LAYER_KEYS:
            suffix = _LAYER_KEYS[match.group(2)]
            name = f"layers.{match.group(1)}.{suffix}.weight"
        elif tensor.name.endswith(".weight") and tensor.name[: -len(".weight")] in _TOP_KEYS:
            name = _TOP_KEYS[tensor.name[: -len(".weight")]] + ".weight"
        else:
            raise CheckpointError(f"unexpected tensor {tensor.name!r}", path=path,
                                  fix="this GGUF is not a plain Llama model")
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (ValueError, NotImplementedError) as exc:
            raise CheckpointError(f"cannot dequantize {tensor.name!r} ({exc})", path=path,
                                  fix="use a GGUF quantized with a standard type (F32/F16/Q8_0/Q4_0/Q4_1/K-quants)") from None
        shape = tuple(int(d) for d in reversed(tensor.shape))
        state[name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))
    return state


def tokenizer_json_from_gguf(path: Path, out_dir: Path) -> Path:
    """Rebuild tokenizer.json with transformers' GGUF converter (tokens, merges, pre-tokenizer)."""
    from transformers import AutoTokenizer

    try:
        with plain_array_mapping():  # transformers parses the file again
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer.save_pretrained(str(out_dir))
    except Exception as exc:  # transformers raises many types for unsupported vocabularies
        raise TokenizerError(f"cannot rebuild a tokenizer from this GGUF ({exc})", path=path,
                             fix="use a GGUF with a gpt2 (BPE) or llama vocabulary") from None
    return out_dir / "tokenizer.json"


def load_gguf(path: Path, preset: ModelPreset | None) -> LoadedModel:
    if path.is_dir():
        path = next(path.glob("*.gguf"))
    reader = open_gguf(path)
    arch, bos, eos_ids = architecture_from_gguf(reader, path)
    if preset is not None:
        check_against_preset(arch, preset.architecture, path, preset.name)
    state = read_tensors(reader, path)
    if arch.tied_embeddings:
        state.pop("output.weight", None)
    scratch = tempfile.TemporaryDirectory(prefix="llama-mobile-tok-")
    tokenizer = tokenizer_json_from_gguf(path, Path(scratch.name))
    specials, template = resolve_identity(preset, arch, bos, eos_ids)
    return LoadedModel(
        preset=preset.name if preset else "llama", architecture=arch, state_dict=state,
        tokenizer_path=tokenizer, specials=specials, chat_template=template,
        task=preset.task if preset else "chat", source_format=GGUF_FORMAT,
        sources=describe_sources([path]), scratch=scratch,
    )
