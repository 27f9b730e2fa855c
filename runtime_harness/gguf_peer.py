"""The llama.cpp peer of a bundle: its GGUF source requantized by llama.cpp's own quantizer."""
from __future__ import annotations

import ctypes
from pathlib import Path

from llama_mobile.core.manifest import Manifest
from llama_mobile.core.errors import ResourceError, UsageError
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.runtime_harness.gguf_writer import write_gguf

# The llama.cpp type nearest to each recipe's linear scheme.
NEAREST_GGUF_TYPE = {"8da4w": "Q4_0", "4w": "Q4_0", "8da8w": "Q8_0", "8w": "Q8_0", "fp32": "F32"}


def nearest_type(manifest: Manifest) -> str:
    scheme = manifest.linear_scheme
    if scheme not in NEAREST_GGUF_TYPE:
        raise UsageError(f"no llama.cpp type is comparable to scheme {scheme!r}", fix="pass --vs-llama-cpp FILE.gguf")
    return NEAREST_GGUF_TYPE[scheme]


def requantize(source: Path, destination: Path, gguf_type: str) -> Path:
    try:
        import llama_cpp
    except ImportError:
        raise ResourceError("llama-cpp-python is not installed", fix="pip install 'llama-mobile[bench]'") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}" if gguf_type != "F32" else "LLAMA_FTYPE_ALL_F32")
    params.allow_requantize = True
    params.nthread = 2
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params))
    if status != 0 or not destination.exists():
        raise ResourceError(f"llama.cpp could not quantize to {gguf_type} (status {status})", path=source,
                            fix="pass a ready GGUF with --vs-llama-cpp FILE.gguf")
    return destination


def source_checkpoint(manifest: Manifest) -> Path:
    first = manifest.model.source_paths[0]
    return first if first.suffix == ".gguf" else first.parent  # Meta and HF checkpoints are folders


def peer_for_bundle(manifest: Manifest, scratch: Path) -> Path:
    """The bundle's source weights through llama.cpp's quantizer, at the type nearest its recipe.

    A GGUF source is requantized directly; a Meta or Hugging Face checkpoint is first written as an
    F16 GGUF (gguf_writer) the way llama.cpp's converter writes it."""
    gguf_type = nearest_type(manifest)
    source = source_checkpoint(manifest)
    if not source.exists():
        raise UsageError("the checkpoint the bundle was exported from is gone", path=source,
                         fix="pass --gguf FILE.gguf made from it by llama.cpp")
    if manifest.model.source_format != "gguf":

        preset = manifest.model.preset
        loaded = load_checkpoint(preset if preset in MODEL_PRESETS else GENERIC_MODEL, source)
        converted = write_gguf(loaded, scratch / "source-F16.gguf", name=preset)
        del loaded
        try:
            return requantize(converted, scratch / f"peer-{gguf_type}.gguf", gguf_type)
        finally:
            converted.unlink()
    return requantize(source, scratch / f"peer-{gguf_type}.gguf", gguf_type)
