"""Weights a checkpoint already holds quantized, kept as they are: no dequantize-then-requantize.

GGUF: Q8_0 (int8, one fp16 scale per 32 values) and Q4_0 (value + 8 in a nibble, one fp16 scale per 32)
are symmetric integer grids with one scale per group of 32: the integers and scales are read from the
blocks as they are (``PrequantizedTensor``) and the build hands them to the same torchao tensors a recipe
produces (quantize/prequantized.py). Q4_0's nibble - 8 is exactly torchao's symmetric int4 grid [-8, 7],
and Q8_0's int8 is torchao's int8 grid; the fp16 scale widens to float32 without rounding. Other types have
no exact form there (Q4_1/Q5_1 and K-quants carry a minimum or two-level scales, Q5_0 is 5-bit): a file
holding any of them is requantized by the recipe, and the export names the nearest scheme for each.

The float state dict the loaders return still holds the dequantized weights (scale x integer, exactly
what gguf-py's dequantize gives): the float reference and the parity gate use them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from llama_mobile.core.errors import CheckpointError
from llama_mobile.export.loaded import PrequantizedTensor
from llama_mobile.export.tensor_names import GGUF, META, ROPE_FREQS, rename

GROUP = 32  # QK8_0 = QK4_0 = 32 in ggml
# GGUF block types held exactly: (bits, bytes per block of 32)
GGUF_EXACT = {"Q8_0": (8, 34), "Q4_0": (4, 18)}
GGUF_FLOAT = ("F32", "F16", "BF16")
# The nearest scheme ExecuTorch's XNNPACK holds, for every accepted GGUF type without an exact form.
GGUF_NEAREST = {
    "Q4_1": "8da4w g32 symmetric (Q4_1's per-group minimum has no place in XNNPACK's symmetric int4)",
    "Q5_0": "8da8w per channel (XNNPACK has no 5-bit weights; its int8 weights take one scale per row)",
    "Q5_1": "8da8w per channel (5-bit with a minimum: no XNNPACK form)",
    "Q2_K": "8da4w g32 (K-quants' two-level scales and minimums have no XNNPACK form)",
    "Q3_K": "8da4w g32 (K-quants' two-level scales have no XNNPACK form)",
    "Q4_K": "8da4w g32 (K-quants' two-level scales and minimums have no XNNPACK form)",
    "Q5_K": "8da8w per channel (5-bit K-quant: no XNNPACK form)",
    "Q6_K": "8da8w per channel (6-bit K-quant: no XNNPACK form)",
    "F32": "float (a float matrix beside quantized ones: the recipe decides)",
    "F16": "float (a float matrix beside quantized ones: the recipe decides)",
    "BF16": "float (a float matrix beside quantized ones: the recipe decides)",
}


def _kind(tensor) -> str:
    return getattr(tensor.tensor_type, "name", str(tensor.tensor_type))


def gguf_block_record(tensor, kind: str) -> PrequantizedTensor:
    """The integers and scales of one Q8_0 / Q4_0 tensor, straight from its blocks."""
    bits, block_bytes = GGUF_EXACT[kind]
    rows, columns = (int(d) for d in reversed(tensor.shape))
    blocks = np.ascontiguousarray(tensor.data, dtype=np.uint8).reshape(-1, block_bytes)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if kind == "Q8_0":
        values = blocks[:, 2:].copy().view(np.int8)
    else:  # Q4_0: byte j holds value j (low nibble) and value j + 16 (high nibble), each stored as value + 8
        packed = blocks[:, 2:]
        values = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8) - np.int8(8)
    return PrequantizedTensor(qdata=torch.from_numpy(np.ascontiguousarray(values).reshape(rows, columns)),
                              scale=torch.from_numpy(scale.reshape(rows, columns // GROUP)),
                              bits=bits, group_size=GROUP, source=kind)


def gguf_quantization(reader, tied: bool) -> tuple[dict[str, PrequantizedTensor], dict]:
    """({Meta name: record} when every matrix is Q8_0/Q4_0, else {}; what the file holds and how it maps).
    A float GGUF gives ({}, {})."""
    matrices = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS or len(tensor.shape) < 2:
            continue
        name = rename(tensor.name, GGUF, META)
        if name is not None and not (tied and name == "output.weight"):
            matrices[name] = (tensor, _kind(tensor))
    types = Counter(kind for _, kind in matrices.values())
    if not set(types) - set(GGUF_FLOAT):
        return {}, {}
    record: dict = {"format": "gguf", "scheme": "GGUF " + "/".join(sorted(set(types) - set(GGUF_FLOAT))),
                    "tensor_types": dict(sorted(types.items()))}
    unmapped = sorted(set(types) - set(GGUF_EXACT))
    if unmapped:
        record["kept"] = False
        record["nearest"] = {kind: GGUF_NEAREST.get(kind, "none") for kind in unmapped}
        return {}, record
    record["kept"] = True
    return {name: gguf_block_record(tensor, kind) for name, (tensor, kind) in matrices.items()}, record


def check_prequantized(records: dict[str, PrequantizedTensor], state: dict[str, torch.Tensor], path: Path) -> None:
    """Every record against the float tensor of the same name: dtypes, shapes, group size, integer range.
    The first problem is a one-line CheckpointError naming the tensor."""
    for name, record in records.items():
        def fail(problem: str):
            raise CheckpointError(f"quantized tensor {name!r}: {problem}", path=path,
                                  fix="the checkpoint is damaged or not in the published format: re-download it")
        if name not in state:
            fail("has no place in the model")
        rows, columns = state[name].shape
        if record.qdata.dtype != torch.int8 or tuple(record.qdata.shape) != (rows, columns):
            fail(f"integers are {record.qdata.dtype} {list(record.qdata.shape)}, expected int8 {[rows, columns]}")
        if record.group_size <= 0 or columns % record.group_size:
            fail(f"group size {record.group_size} does not divide its {columns} columns")
        expected = (rows, columns // record.group_size)
        if not record.scale.is_floating_point() or tuple(record.scale.shape) != expected:
            fail(f"scales are {record.scale.dtype} {list(record.scale.shape)}, expected float {list(expected)} "
                 f"(group size {record.group_size})")
        if not bool(torch.isfinite(record.scale).all()):
            fail("scales hold NaN or Inf")
        low, high = -(1 << (record.bits - 1)), (1 << (record.bits - 1)) - 1
        if record.qdata.numel() and not (low <= int(record.qdata.min()) and int(record.qdata.max()) <= high):
            fail(f"integers leave the {record.bits}-bit range [{low}, {high}]")


def describe(quantization: dict) -> str:
    """One line for the progress output."""
    types = ", ".join(f"{kind} x{count}" for kind, count in quantization.get("tensor_types", {}).items())
    if quantization.get("kept"):
        return f"{quantization['format']} quantized weights ({types}) kept as they are"
    nearest = "; ".join(f"{kind} -> nearest {scheme}" for kind, scheme in quantization.get("nearest", {}).items())
    return f"{quantization['format']} weights ({types}) have no exact XNNPACK form: {nearest}"
