"""Which of a bundle's variants (one per lowering target) runs on a device: the rules the Kotlin and Swift
cores apply too (tests/vectors/variant_choice.json holds the shared cases).

A variant is eligible when its status is "ok" and the device meets every requirement it states (each may
be absent): the OS, a minimum OS version (dotted, compared part by part), the NPU backend and chip, ISA
features, RAM. Among the eligible ones an NPU variant (QNN, NeuroPilot) wins over Core ML, which wins over
XNNPACK; ties go to the one listed first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from llama_mobile.core.devices import Device

RANK = {"qnn": 0, "neuropilot": 0, "coreml": 1, "xnnpack": 2}
OTHER_RANK = 3


@dataclass(frozen=True)
class Choice:
    target: str | None  # None: no variant runs on the device
    reasons: dict[str, str] = field(default_factory=dict)  # target -> why it was not eligible


def version_tuple(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in str(version).split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def at_least(version: str, minimum: str) -> bool:
    have, need = version_tuple(version), version_tuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def why_not(variant: dict, device: dict) -> str | None:
    """Why ``variant`` cannot run on ``device``; None when it can."""
    if variant.get("status") != "ok":
        return f"skipped at export: {variant.get('reason') or 'no reason given'}"
    needs = variant.get("requires") or {}
    if needs.get("os") and needs["os"] != device.get("os"):
        return f"needs {needs['os']}, the device runs {device.get('os')}"
    try:
        old = bool(needs.get("min_os")) and not at_least(device.get("os_version") or "0", needs["min_os"])
    except ValueError:
        return f"cannot compare OS versions {device.get('os_version')!r} and {needs.get('min_os')!r}"
    if old:
        return f"needs {needs.get('os') or 'OS'} {needs['min_os']}, the device has {device.get('os_version')}"
    if needs.get("npu_backend") and needs["npu_backend"] != device.get("npu_backend"):
        return f"needs a {needs['npu_backend']} NPU"
    if needs.get("chip") and needs["chip"] != device.get("chip"):
        return f"compiled for {needs['chip']}, the device has {device.get('chip')}"
    missing = [feature for feature in needs.get("isa") or () if feature not in (device.get("isa") or ())]
    if missing:
        return f"needs CPU features {', '.join(missing)}"
    if needs.get("min_ram_gb") is not None and (device.get("ram_gb") or 0) < needs["min_ram_gb"]:
        return f"needs {needs['min_ram_gb']} GB of RAM, the device has {device.get('ram_gb')}"
    return None


def choose_variant(variants: list[dict], device: dict) -> Choice:
    reasons = {v["target"]: reason for v in variants if (reason := why_not(v, device)) is not None}
    eligible = [(RANK.get(v.get("backend"), OTHER_RANK), index, v["target"])
                for index, v in enumerate(variants) if v["target"] not in reasons]
    return Choice(min(eligible)[2] if eligible else None, reasons)


def describe_device(device: Device, os_version: str | None = None) -> dict:
    """A device preset as the chooser reads it (an Apple SoC runs iOS, any other Android)."""
    apple = device.vendor == "Apple"
    npu = device.npu
    return {"os": "ios" if apple else "android", "os_version": os_version or ("18" if apple else "14"),
            "npu_backend": npu.backend if npu else None, "chip": npu.chip if npu else None,
            "isa": list(device.isa), "ram_gb": device.ram_gb}


def min_ram_gb(runtime_bytes: int) -> int:
    """The RAM a phone needs to run a variant that holds ``runtime_bytes``: an app may use about half."""
    return max(1, math.ceil(2 * runtime_bytes / 2**30))
