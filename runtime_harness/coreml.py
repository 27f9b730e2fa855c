"""Parity for Core ML programs: the real model on macOS, a host simulation elsewhere.

ExecuTorch's runtime off macOS has no Core ML delegate, so on Linux the gate scores the quantized eager
program that was lowered (same weights, same graph) in the target's precision: "host-simulated". On macOS
the Core ML model itself runs through coremltools, one token per call as the phone runs it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llama_mobile.export.model import TORCH_DTYPES
from llama_mobile.runtime_harness.metrics import ParityMetrics, compare_logits
from llama_mobile.runtime_harness.parity import reference_logits


@torch.no_grad()
def host_simulated_logits(model: torch.nn.Module, token_ids: list[int], dtype: str) -> torch.Tensor:
    """The quantized eager model in the target's precision. Casts the model in place (done with it)."""

    _cast_floats(model, TORCH_DTYPES[dtype])
    return reference_logits(model, token_ids)


def _cast_floats(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Module.to, tensor by tensor: after torch.export the quantized (subclass) parameters hold weakrefs
    that Module.to's in-place swap refuses."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point():
                setattr(module, name, torch.nn.Parameter(param.detach().to(dtype), requires_grad=False))
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))


def coreml_logits_per_position(mlpackage: Path, token_ids: list[int], compute_units: str = "all") -> torch.Tensor:
    """Run the Core ML model token by token (macOS only): logits [positions, vocab]."""
    import coremltools as ct

    model = ct.models.MLModel(str(mlpackage), compute_units=ct.ComputeUnit[compute_units.upper()])
    spec = model.get_spec().description
    stateful = len(spec.state) > 0
    state = model.make_state() if stateful else None
    # Without state the caches are inputs, and the model returns their updated values in the same order,
    # followed by the logits.
    caches = [i for i in spec.input if i.name not in ("tokens", "input_pos")]
    outputs = [o.name for o in spec.output]
    feeds = {i.name: np.zeros(tuple(i.type.multiArrayType.shape), dtype=np.float32) for i in caches}
    rows = []
    for position, token in enumerate(token_ids):
        inputs = {"tokens": np.array([[token]], dtype=np.int32), "input_pos": np.array([position], dtype=np.int32),
                  **feeds}
        result = model.predict(inputs, state=state) if stateful else model.predict(inputs)
        for cache, name in zip(caches, outputs[:-1]):
            feeds[cache.name] = np.asarray(result[name], dtype=np.float32)
        rows.append(torch.from_numpy(np.asarray(result[outputs[-1]], dtype=np.float32)).reshape(-1))
    return torch.stack(rows)


def coreml_parity(mlpackage: Path, token_ids: list[int], reference: torch.Tensor,
                  compute_units: str = "all") -> ParityMetrics:
    return compare_logits(reference, coreml_logits_per_position(mlpackage, token_ids, compute_units), token_ids)
