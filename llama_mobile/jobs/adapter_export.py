"""export --adapter: one small program per LoRA adapter over the bundle's one base weights file.

The base is quantized (and calibrated) once, without any adapter. Each adapter's branch is attached to
that same model and lowered again with every base constant sent to the external weights file and the
adapter's own matrices kept inside the program; ExecuTorch names external data by its SHA-256, so every
adapter program reads exactly the base file's bytes (checked). Each adapter program is gated against the
FP32 model of the source with that adapter merged into its weights.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import write_file
from llama_mobile.core.errors import ExportError, UsageError
from llama_mobile.export.adapters import Adapter, merged, read_adapter
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.lower import LoweredProgram, data_sha256
from llama_mobile.export.model import build_model
from llama_mobile.quantize.lora import LORA_TAG, attach
from llama_mobile.runtime_harness.parity import gate, program_parity, reference_logits

ADAPTERS_DIR = "adapters"


@dataclass
class AdapterProgram:
    adapter: Adapter
    lowered: LoweredProgram

    @property
    def program(self) -> str:
        return f"{ADAPTERS_DIR}/{self.adapter.name}.pte"


def read_adapters(options: tuple[tuple[str, Path], ...], arch: Architecture, prequantized: bool) -> list[Adapter]:
    if options and prequantized:
        raise UsageError("LoRA adapters need a float base checkpoint; this one comes quantized",
                         fix="export the adapters over the float (BF16/FP32) checkpoint")
    return [read_adapter(name, path, arch) for name, path in options]


def keeps_adapter_inside(name: str) -> bool:
    return LORA_TAG in name


def lower_adapters(model: torch.nn.Module, adapters: list[Adapter], base: LoweredProgram,
                   lower_one: Callable[[Callable[[str], bool]], LoweredProgram],
                   note: Callable[[str], None]) -> list[AdapterProgram]:
    """Each adapter attached to the quantized base and lowered; the base model is left as it was."""
    if not adapters:
        return []
    base_sha = data_sha256(base.weights)
    programs = []
    try:
        for adapter in adapters:
            attach(model, adapter.weights, adapter.scale)
            lowered = lower_one(keeps_adapter_inside)
            if data_sha256(lowered.weights) != base_sha:
                raise ExportError(f"internal error: adapter {adapter.name}'s program reads other base weights "
                                  "than the base program", fix="report this with the command line")
            lowered.weights = None  # the same bytes as the base's: written once, from the base's
            programs.append(AdapterProgram(adapter, lowered))
            note(f"adapter {adapter.name}: rank {adapter.rank}, {len(adapter.weights)} linears, program "
                 f"{len(lowered.pte) / 2**20:.2f} MiB, {lowered.delegated_calls} delegated calls")
    finally:
        attach(model, {}, 0.0)
    return programs


def write_adapter_programs(staging: Path, programs: list[AdapterProgram]) -> None:
    (staging / ADAPTERS_DIR).mkdir(exist_ok=True)
    for program in programs:
        write_file(staging / program.program, program.lowered.pte)


def gate_adapters(programs: list[AdapterProgram], *, model: str, checkpoint: Path | None, context: int,
                  token_ids: list[int], weights: Path, staging: Path, thresholds: dict,
                  note: Callable[[str], None]) -> list[dict]:
    """Every adapter program (with the base weights file) against the FP32 source with that adapter merged;
    returns the manifest's adapter entries, each with its gate result."""
    entries = []
    source = load_checkpoint(model, checkpoint) if programs else None
    for program in programs:
        adapter = program.adapter
        reference_model = build_model(source.architecture, context, merged(source.state_dict, adapter))
        reference = reference_logits(reference_model, token_ids)
        del reference_model
        metrics = program_parity(staging / program.program, token_ids, reference, weights)
        result = gate(metrics, thresholds, reference="fp32 eager, adapter merged")
        note(f"adapter {adapter.name}: " + result.summary())
        entries.append({**adapter.record(), "program": program.program, "parity": result.to_dict()})
    return entries


def with_adapter_failures(parity: dict | None, entries: list[dict]) -> dict | None:
    """The bundle's gate result, failed as well when an adapter's gate failed."""
    failed = [f"adapter {a['name']}: " + "; ".join(a["parity"]["failures"]) for a in entries
              if a["parity"] is not None and not a["parity"]["passed"]]
    if not failed or parity is None:
        return parity
    return {**parity, "passed": False, "failures": [*parity["failures"], *failed]}


def adapter_entries(programs: list[AdapterProgram]) -> list[dict]:
    """The manifest's adapter entries of an export without the gate."""
    return [{**p.adapter.record(), "program": p.program, "parity": None} for p in programs]
