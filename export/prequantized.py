"""Weights a checkpoint already holds quantized, kept as they are: no dequantize-then-requantize.

GGUF: Q8_0 (int8, one fp16 scale per 32 values) and Q4_0 (value + 8 in a nibble, one fp16 scale per 32)
are symmetric integer grids with one scale per group of 32: the integers and scales are read from the
blocks as they are (``PrequantizedTensor``) and the build hands them to the same torchao tensors a recipe
produces (quantize/prequantized.py). Q4_0's nibble - 8 is exactly torchao's symmetric int4 grid [-8, 7],
and Q8_0's int8 is torchao's int8 grid; the fp16 scale widens to float32 without rounding. Other types have
no exact form there (Q4_1/Q5_1 and K-quants carry a minimum or two-level scales, Q5_0 is 5-bit). Each matrix
is judged on its own: the Q8_0/Q4_0 ones are kept, and the others (a file's Q6_K or F16 token_embd beside
Q4_0 blocks, as llama-quantize often writes) are quantized from their float values by the as-published
recipe's scheme for them; the export names the nearest scheme for each such type. A file whose block
linears are not all Q8_0/Q4_0 (the embedded SmolLM2: Q4_1 blocks) is requantized whole by the recipe.

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
    """({Meta name: record} of every Q8_0/Q4_0 matrix when all block linears are such, else {}; what the
    file holds and how it maps). A float GGUF gives ({}, {})."""
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
        record["nearest"] = {kind: GGUF_NEAREST.get(kind, "the recipe's scheme") for kind in unmapped}
    # Kept per matrix only when every block linear maps (the bulk of the weights): then the odd ones out are
    # the embedding or output layer. A file whose blocks are of another type goes to the recipe whole.
    blocks_map = all(kind in GGUF_EXACT for name, (_, kind) in matrices.items() if name.startswith("layers."))
    kept = {name: gguf_block_record(tensor, kind) for name, (tensor, kind) in matrices.items()
            if kind in GGUF_EXACT} if blocks_map else {}
    record["kept"] = bool(kept)
    if kept and unmapped:
        record["requantized"] = sorted(name for name, (_, kind) in matrices.items() if kind not in GGUF_EXACT)
    return kept, record


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
    nearest = "; ".join(f"{kind} -> nearest {scheme}" for kind, scheme in quantization.get("nearest", {}).items())
    if quantization.get("kept"):
        extras = "".join([", online Hadamard transform before w2" if quantization.get("spinquant") else "",
                          f", LoRA rank {quantization['lora_rank']} adaptors in fp32" if quantization.get("lora_rank")
                          else ""])
        requantized = quantization.get("requantized")
        if requantized:
            return (f"{quantization['scheme']} weights ({types}{extras}): the Q8_0/Q4_0 matrices kept as they are, "
                    f"{len(requantized)} others quantized from their float values ({nearest})")
        return f"{quantization['scheme']} weights ({types}{extras}) kept as they are"
    return f"{quantization['scheme']} weights ({types}) have no exact XNNPACK form: {nearest}"


# Meta's quantized Llama 3.2 (SpinQuant_INT4_EO8, QLORA_INT4_EO8): what ExecuTorch reads with
# --preq_mode 8da4w_output_8da8w --preq_group_size 32 --preq_embedding_quantize 8,0 [--use_spin_quant native]
# [--use_lora 16] (examples/models/llama/source_transformation/pre_quantization.py, lora.py, spin_quant.py):
#   block linears  X.weight int8 [out, in] holding int4 values, X.scales [out, in / group], X.zeros (zeroed)
#   output         output.weight int8 [vocab, dim], output.scales [vocab] (8da8w per channel)
#   embedding      tok_embeddings.weight int8 [vocab, dim], tok_embeddings.scales [vocab] (8-bit per row)
#   LoRA           X.adaptor.A.weight bf16 [rank, in], X.adaptor.B.weight bf16 [out, rank]; y += scale * B(A(x))
#   SpinQuant      R1/R2 already merged into the weights; R4 is an online Hadamard transform of w2's input
META_GROUP_SIZES = (32, 64, 128, 256)  # transform_linear_for_pre_quantization's accepted sizes
LORA_SCALE = 2.0  # LoRAAdaptorLinear's default, which ExecuTorch's loader uses


def meta_quantization_args(params: dict, path: Path) -> dict | None:
    """params.json's quantization_args / lora_args, checked; None for a float checkpoint."""
    args = params.get("quantization_args")
    if args is None:
        return None
    if not isinstance(args, dict):
        raise CheckpointError("quantization_args must be a JSON object", path=path,
                              fix="restore params.json from the model download")
    group = args.get("group_size")
    if not isinstance(group, int) or isinstance(group, bool) or group not in META_GROUP_SIZES:
        raise CheckpointError(f"quantization_args.group_size {group!r} is not one of "
                              f"{', '.join(map(str, META_GROUP_SIZES))}", path=path,
                              fix="restore params.json from the model download")
    lora = params.get("lora_args")
    if lora is not None and (not isinstance(lora, dict) or not isinstance(lora.get("rank"), int)
                             or isinstance(lora.get("rank"), bool) or lora["rank"] <= 0):
        raise CheckpointError(f"lora_args {lora!r} must hold a positive integer rank", path=path,
                              fix="restore params.json from the model download")
    scale = float(lora.get("scale", LORA_SCALE)) if lora else 0.0
    return {"group_size": group, "spinquant": args.get("spinquant") is True,
            "lora_rank": lora["rank"] if lora else 0, "lora_scale": scale}


def _meta_scales(state: dict, name: str, rows: int, path: Path) -> torch.Tensor:
    key = name.removesuffix(".weight") + ".scales"
    scales = state.get(key)
    if scales is None:
        raise CheckpointError(f"int8 tensor {name!r} has no {key!r}", path=path,
                              fix="the checkpoint is incomplete: re-download it")
    if not scales.is_floating_point():
        raise CheckpointError(f"{key!r} has dtype {str(scales.dtype).removeprefix('torch.')}, not a float dtype",
                              path=path, fix="the checkpoint is damaged: re-download it")
    if scales.dim() == 1 and scales.shape[0] == rows:
        scales = scales.unsqueeze(1)  # one scale per row
    return scales.to(torch.float32)


def meta_quantized_state(raw: dict[str, torch.Tensor], args: dict, path: Path
                         ) -> tuple[dict[str, torch.Tensor], dict[str, PrequantizedTensor], dict]:
    """Meta's quantized state dict -> (float state the loaders return, {name: record}, what was found).
    The float state holds each layer's float_weight(): the reference model of exactly these integers."""
    group, spin, rank = args["group_size"], args["spinquant"], args["lora_rank"]
    state: dict[str, torch.Tensor] = {}
    records: dict[str, PrequantizedTensor] = {}
    adaptors = {k for k in raw if ".adaptor." in k}
    for name, tensor in raw.items():
        if name.endswith((".scales", ".zeros")) or name in adaptors:
            continue
        if tensor.dtype != torch.int8:
            if not tensor.is_floating_point():
                raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}", path=path,
                                      fix="pass Meta's consolidated.00.pth as downloaded")
            if name.endswith(".weight") and tensor.dim() == 2 and name.removesuffix(".weight") + ".scales" in raw:
                raise CheckpointError(f"tensor {name!r} has scales but is {tensor.dtype}, not int8", path=path,
                                      fix="the checkpoint is damaged: re-download it")
            state[name] = tensor
            continue
        if tensor.dim() != 2:
            raise CheckpointError(f"int8 tensor {name!r} has shape {list(tensor.shape)}, expected a matrix",
                                  path=path, fix="pass Meta's consolidated.00.pth as downloaded")
        rows, columns = tensor.shape
        scales = _meta_scales(raw, name, rows, path)
        block = name.startswith("layers.")
        if block and scales.shape != (rows, columns // group):
            raise CheckpointError(f"{name.removesuffix('.weight')}.scales has shape {list(scales.shape)}, expected "
                                  f"{[rows, columns // group]} (group size {group} from quantization_args)",
                                  path=path, fix="restore params.json and the checkpoint from the same download")
        if not block and scales.shape != (rows, 1):
            raise CheckpointError(f"{name.removesuffix('.weight')}.scales has shape {list(scales.shape)}, expected "
                                  f"[{rows}] (one scale per row)", path=path, fix="re-download the checkpoint")
        record = PrequantizedTensor(qdata=tensor, scale=scales, bits=4 if block else 8,
                                    group_size=group if block else columns,
                                    source=f"int4 g{group}" if block else "int8 per row")
        a_key, b_key = name.removesuffix("weight") + "adaptor.A.weight", name.removesuffix("weight") + "adaptor.B.weight"
        if a_key in raw or b_key in raw:
            if a_key not in raw or b_key not in raw:
                raise CheckpointError(f"{name!r} has half a LoRA adaptor ({a_key if a_key in raw else b_key})",
                                      path=path, fix="re-download the checkpoint")
            a, b = raw[a_key], raw[b_key]
            if rank and (tuple(a.shape) != (rank, columns) or tuple(b.shape) != (rows, rank)):
                raise CheckpointError(f"LoRA adaptor of {name!r} has shapes {list(a.shape)}/{list(b.shape)}, "
                                      f"expected {[rank, columns]}/{[rows, rank]} (lora_args rank {rank})",
                                      path=path, fix="restore params.json and the checkpoint from the same download")
            record.lora_a, record.lora_b, record.lora_scale = a, b, args["lora_scale"]
        record.online_hadamard = spin and name.endswith("feed_forward.w2.weight")
        records[name] = record
        state[name] = record.float_weight()
    used = {k.removesuffix(".scales") + ".weight" for k in raw if k.endswith(".scales")}
    orphans = sorted(k for k in used if k not in records)
    if orphans:
        raise CheckpointError(f"scales for {orphans[0]!r}, which is not an int8 matrix", path=path,
                              fix="the checkpoint is damaged: re-download it")
    stray = sorted(k for k in adaptors if k.replace("adaptor.A.", "").replace("adaptor.B.", "") not in records)
    if stray:
        raise CheckpointError(f"LoRA adaptor {stray[0]!r} belongs to no quantized layer", path=path,
                              fix="the checkpoint is damaged: re-download it")
    lora = any(r.lora_a is not None for r in records.values())
    kind = "SpinQuant" if spin else ("QAT+LoRA" if lora else "QAT")
    info = {"format": "meta", "scheme": f"Meta {kind} INT4 EO8", "kept": True, "requantizable": False,
            "group_size": group, "spinquant": spin, "online_hadamard": "w2 input" if spin else None,
            "lora_rank": rank if lora else 0, "lora_scale": args["lora_scale"] if lora else None,
            "tensor_types": dict(sorted(Counter(r.source for r in records.values()).items()))}
    return state, records, info
