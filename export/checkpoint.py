"""The dispatch from a path to the loader of its format, and the check of what the loader returns:
the first wrong tensor is named in a one-line error."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import CheckpointError, LlamaMobileError, ResourceError, UsageError
from llama_mobile.core.presets import GENERIC_MODEL, get_model_preset
from llama_mobile.export.embedded import embedded_checkpoint
from llama_mobile.export.gguf_loader import load_gguf
from llama_mobile.export.hf_loader import load_hf
from llama_mobile.export.loaded import GGUF_FORMAT, HF_FORMAT, META_FORMAT, LoadedModel, check_tensor
from llama_mobile.export.meta_loader import load_meta
from llama_mobile.export.model import expected_shapes
from llama_mobile.export.pages import release_pages
from llama_mobile.export.prequantized import check_prequantized

log = logging.getLogger(__name__)

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


def check_state_dict(state_dict: dict[str, torch.Tensor], arch: Architecture, path: Path,
                     fmt: str = META_FORMAT) -> None:
    """Names and dtypes, keys and shapes against the architecture, then finiteness; the first problem is
    reported. Every accepted dtype is a float dtype (loaded.ACCEPTED_DTYPES), so finiteness covers them all."""
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"entry {name!r} is a {type(tensor).__name__}, not a tensor", path=path,
                                  fix="pass the checkpoint as downloaded")
        check_tensor(name, tensor.dtype, path, fmt, is_meta=tensor.is_meta)
    arch.check(str(path))  # bounded sizes: expected_shapes below stays small
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
    for name, tensor in state_dict.items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"tensor {name!r} holds NaN or Inf values", path=path,
                                  fix="the file is corrupt: re-download or re-convert it")
        release_pages([tensor])  # read once here; the build reads it again a block at a time


def load_checkpoint(model: str, checkpoint: Path | None, preflight=None) -> LoadedModel:
    """Load `checkpoint` (or the embedded weights of `model`) into a checked LoadedModel.

    preflight(architecture), when given, runs once the shapes are read from the config or header and before
    any tensor is: the export's memory preflight. Whatever the files hold, the outcome is a LoadedModel or one
    of the project's errors; an exception no check foresaw names the checkpoint instead of a traceback."""
    preset = None if model == GENERIC_MODEL else get_model_preset(model)
    if checkpoint is None:
        if preset is None or not preset.embedded:
            raise UsageError(f"model {model!r} has no embedded weights",
                             fix="pass --checkpoint PATH to a Meta, Hugging Face or GGUF checkpoint")
        checkpoint = embedded_checkpoint(preset.name)
    checkpoint = Path(checkpoint).expanduser()
    fmt = detect_format(checkpoint)
    log.info("loading %s checkpoint %s", fmt, checkpoint)
    loader = {META_FORMAT: load_meta, HF_FORMAT: load_hf}.get(fmt, load_gguf)
    try:
        loaded = loader(checkpoint, preset, preflight=preflight)
        check_state_dict(loaded.state_dict, loaded.architecture, checkpoint, loaded.source_format)
        check_prequantized(loaded.prequantized, loaded.state_dict, checkpoint)
    except (LlamaMobileError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise ResourceError("ran out of memory while reading this checkpoint", path=checkpoint,
                            fix="use a machine with more memory, or check that the config's sizes are right") from None
    except Exception as exc:  # a user's file: the error names it, the traceback goes to the log
        log.debug("reading %s failed", checkpoint, exc_info=True)
        lines = str(exc).strip().splitlines()
        raise CheckpointError(f"cannot read this checkpoint ({type(exc).__name__}: "
                              f"{lines[0][:200] if lines else 'no details'})", path=checkpoint,
                              fix="the files are malformed or of an unsupported variant: re-download or "
                                  "re-convert them") from None
    return loaded
