"""The loaded-model stage object and the dispatch from a path to the loader of its format.

Every loader returns a LoadedModel with Meta-named tensors in Meta's RoPE layout, checked against
the architecture: the first wrong tensor is named in a one-line error.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.architecture import Architecture
from llama_mobile.errors import CheckpointError, UsageError
from llama_mobile.presets import ChatTemplate, SpecialTokens

log = logging.getLogger(__name__)

META_FORMAT, HF_FORMAT, GGUF_FORMAT = "meta", "hf", "gguf"


@dataclass
class SourceFile:
    path: str
    size: int
    sha256: str


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


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_sources(paths: list[Path]) -> list[SourceFile]:
    return [SourceFile(str(p), p.stat().st_size, sha256_of(p)) for p in paths]


def detect_format(path: Path) -> str:
    """Which loader a path needs, from the files it holds (never from its name)."""
    if not path.exists():
        raise CheckpointError("checkpoint not found", path=path,
                              fix="pass --checkpoint a Meta folder, a Hugging Face folder or a .gguf file")
    if path.is_file():
        if path.suffix == ".gguf":
            return GGUF_FORMAT
        raise CheckpointError("not a checkpoint folder or .gguf file", path=path,
                              fix="pass the folder holding params.json or config.json")
    if (path / "params.json").exists():
        return META_FORMAT
    if (path / "config.json").exists():
        return HF_FORMAT
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return GGUF_FORMAT
    raise CheckpointError(
        "folder has neither params.json (Meta format) nor config.json (Hugging Face format)",
        path=path, fix="point --checkpoint at the folder the model was downloaded to",
    )


def check_state_dict(state_dict: dict[str, torch.Tensor], arch: Architecture, path: Path) -> None:
    """Keys and shapes against the architecture, then finiteness; the first problem is reported."""
    from export.model import expected_shapes

    expected = expected_shapes(arch)
    for name, shape in expected.items():
        if name not in state_dict:
            raise CheckpointError(f"missing tensor {name!r} (expected shape {list(shape)})", path=path,
                                  fix="the checkpoint is incomplete or for another model: re-download it "
                                      "or pick the matching --model")
        actual = tuple(state_dict[name].shape)
        if actual != shape:
            raise CheckpointError(f"tensor {name!r} has shape {list(actual)}, expected {list(shape)}",
                                  path=path, fix="pick the --model preset that matches this checkpoint")
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all)",
                              path=path, fix="the checkpoint is for a different architecture")
    from export.pages import release_pages

    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"tensor {name!r} holds NaN or Inf values", path=path,
                                  fix="the file is corrupt: re-download or re-convert it")
        release_pages([tensor])  # read once here; the build reads it again a block at a time


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


def load_checkpoint(model: str, checkpoint: Path | None) -> LoadedModel:
    """Load `checkpoint` (or the embedded weights of `model`) into a checked LoadedModel."""
    from llama_mobile.presets import GENERIC_MODEL, get_model_preset

    preset = None if model == GENERIC_MODEL else get_model_preset(model)
    if checkpoint is None:
        if preset is None or not preset.embedded:
            raise UsageError(f"model {model!r} has no embedded weights",
                             fix="pass --checkpoint PATH to a Meta, Hugging Face or GGUF checkpoint")
        from export.embedded import embedded_checkpoint

        checkpoint = embedded_checkpoint(preset.name)
    checkpoint = Path(checkpoint).expanduser()
    fmt = detect_format(checkpoint)
    log.info("loading %s checkpoint %s", fmt, checkpoint)
    if fmt == META_FORMAT:
        from export.meta_loader import load_meta

        loaded = load_meta(checkpoint, preset)
    elif fmt == HF_FORMAT:
        from export.hf_loader import load_hf

        loaded = load_hf(checkpoint, preset)
    else:
        from export.gguf_loader import load_gguf

        loaded = load_gguf(checkpoint, preset)
    check_state_dict(loaded.state_dict, loaded.architecture, checkpoint)
    return loaded
