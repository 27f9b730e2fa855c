"""The backend registry: one module per ExecuTorch backend, each registering one ``Backend`` (see base.py).

Adding a backend: a module here with a ``Backend`` subclass and ``register(...)``, its import below, and a
``Target`` in core/targets.py naming it.
"""
from __future__ import annotations

import dataclasses

from llama_mobile.core.devices import DEVICES, get_device
from llama_mobile.core.errors import ExportError, UsageError
from llama_mobile.core.targets import Target
from llama_mobile.export.backends import coreml, neuropilot, qnn, vulkan, xnnpack  # noqa: F401  (they register)
from llama_mobile.export.backends.base import BACKENDS, Backend


def get_backend(target: Target) -> Backend:
    try:
        return BACKENDS[target.backend]
    except KeyError:
        raise ExportError(f"backend {target.backend!r} is not available in this build",
                          fix="use --target xnnpack") from None


def sdk_problem(target: Target) -> str | None:
    """Why the target's SDK is unusable here, or None: a file and module lookup, no heavy import."""
    return get_backend(target).sdk_problem()


def bind_device(target: Target, device_name: str | None) -> Target:
    """NPU targets compile for one SoC: take it from the device preset (recorded in the target's options)."""
    if not get_backend(target).needs_chip:
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
    return dataclasses.replace(target, options=dataclasses.replace(target.options, chip=npu.chip))
