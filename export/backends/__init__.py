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

from llama_mobile.core.devices import DEVICES, get_device
from llama_mobile.core.errors import ExportError, UsageError
from llama_mobile.core.targets import Target


def backend_module(target: Target) -> ModuleType:
    try:
        return importlib.import_module(f"llama_mobile.export.backends.{target.backend}")
    except ModuleNotFoundError as exc:
        if exc.name != f"llama_mobile.export.backends.{target.backend}":
            raise
        raise ExportError(f"backend {target.backend!r} is not available in this build",
                          fix="use --target xnnpack") from None


def sdk_problem(target: Target) -> str | None:
    """Why the target's SDK is unusable here, or None: a file and module lookup, no heavy import."""
    module = backend_module(target)
    return module.sdk_problem() if hasattr(module, "sdk_problem") else None


def bind_device(target: Target, device_name: str | None) -> Target:
    """NPU targets compile for one SoC: take it from the device preset (recorded in the target's options)."""
    import dataclasses


    if target.backend not in NPU_BACKENDS:
        return target

    known = [n for n, d in DEVICES.items() if d.npu and d.npu.target == target.name]
    fix = f"pass --device {' or '.join(known)}"
    if not device_name:
        raise UsageError(f"target {target.name} compiles for one SoC and needs --device", fix=fix)
    npu = get_device(device_name).npu
    if npu is None or npu.target != target.name or not npu.chip:
        why = npu.note if npu is not None and npu.note else "no such NPU"
        raise UsageError(f"device {device_name} cannot use target {target.name} ({why})",
                         fix=f"use --target xnnpack for {device_name}, or {fix}")
    return dataclasses.replace(target, options=(*target.options, ("chip", npu.chip)))


NPU_BACKENDS = ("qnn", "neuropilot")
