"""The Core ML model inside a .pte: extract it, read its spec, and check its structure on any host.

What Linux can check without compiling the model: the program is one Core ML delegate and nothing runs
outside it, the KV cache is Core ML state (iOS 18), tensors are fp16, and quantized weights are Core ML's
constexpr dequantize ops (int4 block-wise: constexpr_blockwise_shift_scale).
"""
from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

from llama_mobile.core.errors import ExportError
from llama_mobile.export.bundle import write_json

COREML_BACKEND_ID = "CoreMLBackend"
MLPACKAGE_NAME = "model.mlpackage"
REPORT_NAME = "coreml_report.json"
# Core ML ops that hold compressed weights and expand them when the model loads or runs.
DEQUANTIZE_OPS = ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize", "constexpr_lut_to_dense")


def program_calls(pte: bytes) -> tuple[list[str], Counter]:
    """The delegates (backend ids) the program calls, and the kernels it runs outside them."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import KernelCall

    program = deserialize_pte_binary(pte).program
    plan = next(p for p in program.execution_plan if p.name == "forward")
    kernels: Counter = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            if isinstance(instruction.instr_args, KernelCall):
                operator = plan.operators[instruction.instr_args.op_index]
                kernels[operator.name + (f".{operator.overload}" if operator.overload else "")] += 1
    return [d.id for d in plan.delegates], kernels


def extract_mlpackage(pte: bytes, dest: Path) -> Path:
    """Write the program's (single) Core ML model to ``dest`` (a folder named *.mlpackage)."""
    from executorch.backends.apple.coreml import executorchcoreml
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DataLocation

    program = deserialize_pte_binary(pte).program
    delegates = [d for plan in program.execution_plan for d in plan.delegates if d.id == COREML_BACKEND_ID]
    if len(delegates) != 1 or delegates[0].processed.location != DataLocation.INLINE:
        raise ExportError(f"expected one inline Core ML delegate in the program, found {len(delegates)}",
                          fix="report this with the command line")
    processed = bytes(program.backend_delegate_data[delegates[0].processed.index].data)
    with tempfile.TemporaryDirectory(prefix="coreml-") as scratch:
        # The delegate holds a flattened folder: lowered_module/{model.mlpackage, metadata.json, ...}.
        if not executorchcoreml.unflatten_directory_contents(processed, scratch):
            raise ExportError("cannot unpack the Core ML model from the program", fix="report this")
        found = sorted(Path(scratch).rglob(MLPACKAGE_NAME))
        if not found:
            raise ExportError("the Core ML delegate holds no model.mlpackage (a compiled model?)")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(found[0], dest)
    return Path(dest)


def read_spec(mlpackage: Path) -> dict:
    """Inputs, outputs, states, op counts and tensor precisions of an ML program."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    spec = ct.models.MLModel(str(mlpackage), skip_model_load=True).get_spec()
    array_type = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name

    def feature(f, kind):
        array = getattr(f.type, kind).arrayType if kind == "stateType" else f.type.multiArrayType
        return {"name": f.name, "dtype": array_type(array.dataType), "shape": list(array.shape)}

    ops: Counter = Counter()
    dtypes: Counter = Counter()

    def walk(block):
        for op in block.operations:
            ops[op.type] += 1
            for out in op.outputs:
                if out.type.HasField("tensorType"):
                    dtypes[MIL_pb2.DataType.Name(out.type.tensorType.dataType)] += 1
            for inner in op.blocks:
                walk(inner)

    main = spec.mlProgram.functions["main"]
    for block in main.block_specializations.values():
        walk(block)
    return {
        "specification_version": spec.specificationVersion,
        "opset": main.opset,
        "inputs": [feature(f, "multiArrayType") for f in spec.description.input],
        "outputs": [feature(f, "multiArrayType") for f in spec.description.output],
        "states": [feature(f, "stateType") for f in spec.description.state],
        "ops": dict(ops.most_common()),
        "tensor_dtypes": dict(dtypes.most_common()),
    }


def structural_report(pte: bytes, mlpackage: Path, *, stateful: bool, fused_sdpa: bool, n_layers: int,
                      precision: str, quantized_layers: int, delegated_ops: int, ops_outside: dict[str, int]) -> dict:
    """The spec and what it must show; ``passed`` is false when any check fails."""
    delegates, kernels = program_calls(pte)
    spec = read_spec(mlpackage)
    total = delegated_ops + sum(ops_outside.values())
    dequantize = sum(spec["ops"].get(op, 0) for op in DEQUANTIZE_OPS)
    floats = {name: spec["tensor_dtypes"].get(name, 0) for name in ("FLOAT16", "FLOAT32")}
    # Without state, ExecuTorch writes the caches the model returns back into its buffers (copy_).
    allowed_ops, allowed_kernels = (set(), set()) if stateful else ({"copy_.default"}, {"aten::copy_"})
    checks = {
        "one_coreml_delegate": delegates == [COREML_BACKEND_ID],
        "fully_delegated": set(ops_outside) <= allowed_ops and set(kernels) <= allowed_kernels,
        # iOS 18: a key and a value cache per layer, held by Core ML; older targets pass them in and out.
        "kv_cache_states": len(spec["states"]) == (2 * n_layers if stateful else 0),
        "precision": max(floats, key=floats.get) == {"fp16": "FLOAT16", "fp32": "FLOAT32"}[precision],
        "quantized_weights": dequantize >= quantized_layers,
        # iOS 18 has a fused scaled_dot_product_attention op; earlier targets decompose it.
        "fused_sdpa": not fused_sdpa or spec["ops"].get("scaled_dot_product_attention", 0) == n_layers,
    }
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "delegated_share": round(delegated_ops / total, 4) if total else 0.0,
        "delegated_ops": delegated_ops,
        "total_ops": total,
        "ops_outside_delegates": ops_outside,
        "program": {"delegates": delegates, "kernels_outside_delegates": dict(kernels)},
        "expected": {"states": 2 * n_layers if stateful else 0, "precision": precision,
                     "quantized_layers": quantized_layers},
        "spec": spec,
    }


def write_coreml_report(staging: Path, lowered, target, recipe, n_layers: int, quantized_layers: int) -> dict:
    """Extract model.mlpackage into the bundle, write coreml_report.json, refuse a malformed program.

    Returns the manifest's summary of it.
    """

    mlpackage = extract_mlpackage(lowered.pte, staging / MLPACKAGE_NAME)
    stateful = bool(target.options.state)
    report = structural_report(
        lowered.pte, mlpackage, stateful=stateful, fused_sdpa=target.options.deployment_target >= "iOS18",
        n_layers=n_layers, precision=recipe.dtype, quantized_layers=quantized_layers,
        delegated_ops=lowered.delegated_ops, ops_outside=lowered.portable_ops)
    write_json(staging / REPORT_NAME, report)
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        raise ExportError(f"the Core ML program fails its structural checks: {', '.join(failed)}",
                          fix="report this with the command line (the checks are listed in coreml_report.json)")
    spec = report["spec"]
    dequantize = {op: n for op, n in spec["ops"].items() if op in DEQUANTIZE_OPS}
    return {
        "mlpackage": MLPACKAGE_NAME,
        "report": REPORT_NAME,
        "deployment_target": target.options.deployment_target,
        "compute_units": target.options.compute_units,
        "precision": recipe.dtype,
        "stateful_kv_cache": stateful,
        "states": [s["name"] for s in spec["states"]],
        "delegated_share": report["delegated_share"],
        "summary": (f"Core ML: {report['delegated_ops']} of {report['total_ops']} ops delegated "
                    f"({report['delegated_share']:.0%}), "
                    f"{len(spec['states'])} state tensors, "
                    + (", ".join(f"{op} x{n}" for op, n in dequantize.items()) or "float weights")),
    }
