"""One module per ExecuTorch backend. Each exposes:

- ``check_environment(target)``: raise a one-line ``ExportError``/``UsageError`` when what the backend
  needs (an SDK, an OS) is missing; called in the check stage, before any weight is read.
- ``partitioners(target)``: the partitioners handed to ``to_edge_transform_and_lower``.
- ``MODEL_OPTIONS``: keyword arguments for ``export.model.build_model`` the backend needs (e.g. plain
  SDPA instead of ExecuTorch's custom LLM ops, which only XNNPACK/portable runtimes carry).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from llama_mobile.errors import ExportError
from llama_mobile.targets import Target


def backend_module(target: Target) -> ModuleType:
    try:
        return importlib.import_module(f"export.backends.{target.backend}")
    except ModuleNotFoundError as exc:
        if exc.name != f"export.backends.{target.backend}":
            raise
        raise ExportError(f"backend {target.backend!r} is not available in this build",
                          fix="use --target xnnpack") from None
