"""How the parity gate measures a program, by the method its backend names (export/backends/base.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from llama_mobile.core.targets import Target
from llama_mobile.export.backends.base import ParityMethod
from llama_mobile.runtime_harness.coreml import coreml_parity, host_simulated_logits
from llama_mobile.runtime_harness.metrics import ParityMetrics, compare_logits
from llama_mobile.runtime_harness.parity import program_parity


def keeps_eager_model(method: str) -> bool:
    """The host simulation scores the quantized eager model: the export keeps it past lowering."""
    return method == ParityMethod.HOST_SIMULATED


def measure_parity(method: str, *, program: Path, weights: Path | None, gate_input: Path | None,
                   eager_model: torch.nn.Module | None, token_ids: list[int], reference: torch.Tensor,
                   dtype: str, target: Target) -> ParityMetrics:
    if method == ParityMethod.COREML:
        return coreml_parity(gate_input, token_ids, reference, target.options.compute_units or "all")
    if method == ParityMethod.HOST_SIMULATED:
        return compare_logits(reference, host_simulated_logits(eager_model, token_ids, dtype), token_ids)
    return program_parity(program, token_ids, reference, weights)
