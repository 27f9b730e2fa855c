"""GGUF files (llama.cpp's format), dequantized to float32. The embedded default model comes this way.

llama.cpp's converter already stores q/k rows in Meta's interleaved RoPE layout, so no permutation
is needed. The tokenizer is rebuilt as a Hugging Face tokenizer.json, which ExecuTorch's runner reads.
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import Keys

from llama_mobile.core import patches
from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.core.errors import CheckpointError, ConfigError, TokenizerError
from llama_mobile.core.presets import ModelPreset
from llama_mobile.export.config_fields import short_repr
from llama_mobile.export.identity import resolve_identity
from llama_mobile.export.loaded import (
    GGUF_FORMAT,
    LoadedModel,
    check_against_preset,
    describe_sources,
)
from llama_mobile.export.model import rope_scale_factors
from llama_mobile.export.prequantized import gguf_quantization
from llama_mobile.export.tensor_names import GGUF, GGUF_ARCH, META, MODEL_TENSOR, ROPE_FREQS, rename

log = logging.getLogger(__name__)

# The GGUF tensor types this loader accepts (float, and llama.cpp's legacy and K block quantizations), all
# dequantized to float32; integer, float64 and the experimental types are refused by name.
GGUF_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                     "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")



@contextlib.contextmanager
def plain_array_mapping():
    """gguf-py's reader slices its np.memmap once per field element (~500,000 times for a 49K-token
    vocabulary), and every memmap slice runs memmap's Python __array_finalize__: 3x slower than
    slicing a plain ndarray view of the same mapping. Pages stay mapped from the file either way.
    Patch "gguf-plain-array-reader" (core/patches.py): off, gguf-py reads through its memmap."""
    if not patches.enabled("gguf-plain-array-reader"):
        yield
        return
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


def _llama(key: str) -> str:
    """A gguf.Keys constant for llama: "{arch}.block_count" -> "llama.block_count"."""
    return key.format(arch=GGUF_ARCH)


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
    if getattr(tensor.tensor_type, "name", None) != "F32" or int(np.prod(tensor.shape)) != head_dim // 2:
        raise ConfigError([f"{ROPE_FREQS} must be {head_dim // 2} F32 values"], path=path,
                          fix="convert a Llama 3.x model with llama.cpp, or a model without RoPE scaling")
    factors = torch.from_numpy(np.asarray(tensor.data, dtype=np.float32).reshape(-1).copy())
    scaling = RopeScaling(factor=float(factors.max()))
    expected = rope_scale_factors(head_dim, theta, scaling)
    if factors.shape != expected.shape or not torch.allclose(factors, expected, rtol=1e-3):
        raise ConfigError([f"{ROPE_FREQS} is not Llama 3's RoPE scaling (factor {scaling.factor:g}, "
                           f"original context {scaling.original_max_position})"], path=path,
                          fix="convert a Llama 3.x model with llama.cpp, or a model without RoPE scaling")
    return scaling


def _typed(reader, key: str, kinds: tuple[type, ...], default, problems: list[str]):
    """A header field of the given Python type(s) (bool is never an int here), or a problem."""
    try:
        value = _field(reader, key, default)
    except Exception as exc:  # noqa: BLE001 - gguf-py decoding a malformed field
        problems.append(f"GGUF key {key!r} cannot be read ({type(exc).__name__})")
        return None
    if value is None or value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, kinds):
        problems.append(f"GGUF key {key!r} must be {'/'.join(k.__name__ for k in kinds)}, "
                        f"got {type(value).__name__} {short_repr(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"GGUF key {key!r} must be a finite number, got {value!r}")
        return None
    return value


def architecture_from_gguf(reader, path: Path) -> tuple[Architecture, int | None, tuple[int, ...] | None]:
    problems = []
    kind = _typed(reader, Keys.General.ARCHITECTURE, (str,), None, problems)
    if kind != GGUF_ARCH and not problems:
        problems.append(f"{Keys.General.ARCHITECTURE} is {short_repr(kind)}, not {GGUF_ARCH!r}")
    values = {}
    for name, key in (("dim", _llama(Keys.LLM.EMBEDDING_LENGTH)), ("n_layers", _llama(Keys.LLM.BLOCK_COUNT)),
                      ("n_heads", _llama(Keys.Attention.HEAD_COUNT)),
                      ("ffn_hidden", _llama(Keys.LLM.FEED_FORWARD_LENGTH))):
        value = _typed(reader, key, (int,), None, problems)
        if value is None and not any(key in p for p in problems):
            problems.append(f"missing GGUF key {key!r}")
        values[name] = value
    n_kv_heads = _typed(reader, _llama(Keys.Attention.HEAD_COUNT_KV), (int,), values["n_heads"], problems)
    vocab = _typed(reader, _llama(Keys.LLM.VOCAB_SIZE), (int,), None, problems)
    theta = _typed(reader, _llama(Keys.Rope.FREQ_BASE), (int, float), 10000.0, problems)
    eps = _typed(reader, _llama(Keys.Attention.LAYERNORM_RMS_EPS), (int, float), 1e-5, problems)
    context = _typed(reader, _llama(Keys.LLM.CONTEXT_LENGTH), (int,), 8192, problems)
    bos = _typed(reader, Keys.Tokenizer.BOS_ID, (int,), None, problems)
    eos = _typed(reader, Keys.Tokenizer.EOS_ID, (int,), None, problems)
    if vocab is None and not problems:
        tokens = reader.fields.get(Keys.Tokenizer.LIST)
        vocab = len(tokens.data) if tokens is not None else 0
    if problems:
        raise ConfigError(problems, path=path, fix="convert a Llama-architecture model with llama.cpp")
    names = {t.name for t in reader.tensors}
    arch = Architecture(
        dim=values["dim"], n_layers=values["n_layers"], n_heads=values["n_heads"], n_kv_heads=n_kv_heads,
        ffn_hidden=values["ffn_hidden"], vocab_size=vocab or 0, rope_theta=float(theta),
        norm_eps=_shortest_float32(eps) if 0 < eps < 1 else float(eps),
        tied_embeddings=GGUF.name(MODEL_TENSOR.OUTPUT) not in names, max_position=context,
    ).check(str(path))  # sizes bounded and heads non-zero before anything is derived from them
    for name, value in ((Keys.Tokenizer.BOS_ID, bos), (Keys.Tokenizer.EOS_ID, eos)):
        if value is not None and not 0 <= value < arch.vocab_size:
            raise ConfigError([f"GGUF key {name!r} = {value} is not a token id below {arch.vocab_size}"], path=path,
                              fix="convert the model again with llama.cpp")
    arch = arch.replace(rope_scaling=rope_scaling_of(reader, arch.head_dim, arch.rope_theta, path))
    return arch.check(str(path)), bos, (eos,) if eos is not None else None


def read_tensors(reader, path: Path) -> dict[str, torch.Tensor]:
    import gguf

    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue  # read into the architecture
        name = rename(tensor.name, GGUF, META)
        if name is None:
            raise CheckpointError(f"unexpected tensor {tensor.name!r}", path=path,
                                  fix="this GGUF is not a plain Llama model")
        kind = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
        if kind not in GGUF_TENSOR_TYPES:
            raise CheckpointError(f"tensor {tensor.name!r} has GGUF type {kind}, not one of "
                                  f"{', '.join(GGUF_TENSOR_TYPES)}", path=path,
                                  fix="convert or quantize the model with llama.cpp to one of these types")
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


def load_gguf(path: Path, preset: ModelPreset | None, preflight=None) -> LoadedModel:
    """preflight(architecture), when given, runs before any tensor is read (the memory preflight)."""
    if path.is_dir():
        path = next(path.glob("*.gguf"))
    reader = open_gguf(path)
    arch, bos, eos_ids = architecture_from_gguf(reader, path)
    if preset is not None:
        check_against_preset(arch, preset.architecture, path, preset.name)
    if preflight is not None:
        preflight(arch)
    state = read_tensors(reader, path)
    if arch.tied_embeddings:
        state.pop("output.weight", None)
    prequantized, quantization = gguf_quantization(reader, arch.tied_embeddings)  # Q8_0/Q4_0 kept as they are
    scratch = tempfile.TemporaryDirectory(prefix="llama-mobile-tok-")
    tokenizer = tokenizer_json_from_gguf(path, Path(scratch.name))
    specials, template = resolve_identity(preset, arch, bos, eos_ids)
    return LoadedModel(
        preset=preset.name if preset else "llama", architecture=arch, state_dict=state,
        tokenizer_path=tokenizer, specials=specials, chat_template=template,
        task=preset.task if preset else "chat", source_format=GGUF_FORMAT,
        sources=describe_sources([path]), scratch=scratch, prequantized=prequantized,
        quantization=quantization,
    )
