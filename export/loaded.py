"""The loaded-model stage object every loader returns: Meta-named tensors in Meta's RoPE layout."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import CheckpointError
from llama_mobile.core.hashing import sha256_file
from llama_mobile.core.presets import ChatTemplate, SpecialTokens

META_FORMAT, HF_FORMAT, GGUF_FORMAT = "meta", "hf", "gguf"
META_QUANTIZED = "meta-quantized"  # Meta's quantized Llama 3.2 files as read (int8 integers beside float scales)

# The tensor dtypes each format may hold; anything else (integers, bool, float64, fp8, complex, quantized
# or meta tensors) is refused by name. GGUF tensors are dequantized to float32 from the block types
# gguf_loader.GGUF_TENSOR_TYPES lists. Every accepted dtype is a float dtype, so the finiteness check covers it.
ACCEPTED_DTYPES = {
    META_FORMAT: ("float32", "float16", "bfloat16"),
    HF_FORMAT: ("float32", "float16", "bfloat16"),
    GGUF_FORMAT: ("float32",),
    META_QUANTIZED: ("float32", "float16", "bfloat16", "int8"),
}
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def dtype_name(dtype) -> str:
    """torch.bfloat16 and safetensors' "BF16" both -> "bfloat16"; unknown names pass through."""
    text = str(dtype)
    return _SAFETENSORS_DTYPES.get(text, text.removeprefix("torch."))


def check_tensor(name, dtype, path: Path, fmt: str, *, is_meta: bool = False) -> None:
    """One tensor's name and dtype against what `fmt` may hold: a one-line error naming the tensor."""
    if not isinstance(name, str):
        raise CheckpointError(f"tensor key {name!r} is a {type(name).__name__}, not a name", path=path,
                              fix="the file is not a model checkpoint: pass the original download")
    accepted = ACCEPTED_DTYPES[fmt]
    if dtype_name(dtype) not in accepted:
        raise CheckpointError(f"tensor {name!r} has dtype {dtype_name(dtype)}, not one of {', '.join(accepted)}",
                              path=path, fix="convert the checkpoint to bfloat16, float16 or float32 weights")
    if is_meta:
        raise CheckpointError(f"tensor {name!r} holds no data (a meta tensor)", path=path,
                              fix="save the checkpoint with its weights materialized")


@dataclass
class SourceFile:
    path: str
    size: int
    sha256: str


@dataclass
class PrequantizedTensor:
    """A weight matrix a checkpoint already holds quantized, kept as it is (export/prequantized.py):
    ``qdata`` the integers (int8 storage, [rows, columns]), ``scale`` one float32 scale per group of
    ``group_size`` columns in a row ([rows, columns // group_size]; group_size = columns: per row),
    symmetric (no zero point). ``source`` names what the file holds ("Q4_0", "Q8_0", Meta's "int4 g32")."""

    qdata: torch.Tensor
    scale: torch.Tensor
    bits: int
    group_size: int
    source: str
    # LoRA adaptor run beside the quantized weight (Meta's QAT+LoRA): y = W x + lora_scale * B (A x)
    lora_a: torch.Tensor | None = None  # [rank, columns]
    lora_b: torch.Tensor | None = None  # [rows, rank]
    lora_scale: float = 0.0
    # SpinQuant's R4: the layer's input goes through a normalized Hadamard transform first (online)
    online_hadamard: bool = False

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the integers and scales stand for (scale x integer, one rounding)."""
        return self.qdata.to(torch.float32) * self.scale.to(torch.float32).repeat_interleave(self.group_size, dim=1)

    def float_weight(self) -> torch.Tensor:
        """The float32 matrix the whole layer applies (the float reference's weight): the dequantized weight,
        plus the merged LoRA product, with the online Hadamard folded in (W H: H is symmetric)."""
        weight = self.dequantize()
        if self.lora_a is not None:
            weight = weight + self.lora_scale * (self.lora_b.to(torch.float32) @ self.lora_a.to(torch.float32))
        return hadamard_rows(weight) if self.online_hadamard else weight


def hadamard_rows(x: torch.Tensor) -> torch.Tensor:
    """The normalized (Sylvester) Walsh-Hadamard transform of each row, as ExecuTorch's
    llama::fast_hadamard_transform computes it; the width must be a power of two."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"a Hadamard transform needs a power-of-two width, not {n}")
    out = x.to(torch.float32).reshape(-1, n)
    h = 1
    while h < n:
        out = out.reshape(-1, n // (2 * h), 2, h)
        out = torch.stack((out[:, :, 0] + out[:, :, 1], out[:, :, 0] - out[:, :, 1]), dim=2)
        h *= 2
    return (out.reshape(x.shape) / torch.sqrt(torch.tensor(float(n)))).contiguous()


@dataclass
class LoadedModel:
    preset: str
    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    tokenizer_path: Path  # the file ExecuTorch's runner loads: tokenizer.json or tokenizer.model
    specials: SpecialTokens
    chat_template: ChatTemplate
    task: str
    source_format: str
    sources: list[SourceFile] = field(default_factory=list)
    # What was done to the weights before export (pruning records); copied into the manifest.
    history: list[dict] = field(default_factory=list)
    # Files a loader had to create (a GGUF's rebuilt tokenizer.json); removed with this object.
    scratch: object = None
    # Weights the checkpoint holds quantized, kept as they are ({Meta weight name: record}); empty for a
    # float checkpoint or one whose quantized types have no exact form (export/prequantized.py).
    prequantized: dict[str, PrequantizedTensor] = field(default_factory=dict)
    # What the file's quantization is and how it maps (types, scheme kept or nearest); {} for float files.
    quantization: dict = field(default_factory=dict)


def describe_sources(paths: list[Path]) -> list[SourceFile]:
    return [SourceFile(str(p), p.stat().st_size, sha256_file(p)) for p in paths]


def check_against_preset(arch: Architecture, preset_arch: Architecture, path: Path, preset: str) -> None:
    """A preset pins the shapes: a checkpoint of another size is refused before any tensor is read."""
    mismatches = [
        f"{name}={getattr(arch, name)} (preset {preset} has {getattr(preset_arch, name)})"
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size")
        if getattr(arch, name) != getattr(preset_arch, name)
    ]
    if mismatches:
        raise CheckpointError("config does not match the preset: " + ", ".join(mismatches), path=path,
                              fix="pick the matching --model, or --model llama to take shapes from the config")
