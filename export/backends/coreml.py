"""Core ML (Apple Neural Engine, GPU, CPU) through ExecuTorch's CoreMLBackend.

The whole program becomes one Core ML model: plain SDPA (Core ML fuses it into its iOS 18
scaled_dot_product_attention op), the KV cache as Core ML state on iOS 18, torchao's int4/int8 weights
as Core ML's constexpr dequantize ops. The torch graph stays fp32; Core ML casts it to the target's
compute precision (its torch frontend does not take fp16 graphs). Lowering runs on Linux; compiling and
running the model needs macOS.
"""
from __future__ import annotations

from llama_mobile.core.errors import ExportError
from llama_mobile.core.targets import Target

# ExecuTorch's custom llama ops have no Core ML lowering; the fp16 graph needs an RMSNorm that does not
# square the residual stream.
MODEL_OPTIONS: dict = {"attention_kernel": "sdpa", "rms_norm": "l2"}
# ExecuTorch's Llama export refuses dynamic shapes with Core ML; one token per call (the runner
# prefills token by token), the cache's length fixed by the context.
RUNNER_METADATA: dict = {"enable_dynamic_shape": False, "use_sdpa_with_kv_cache": False}
# A linear followed by a scalar add (RMSNorm's "+ eps") crashes this coremltools pass (9.0:
# IndexError in optimize_linear._try_to_transform); nothing else depends on it.
SKIPPED_PASSES = ("common::fuse_linear_bias",)
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_ne", "cpu_and_gpu")
PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


def sdk_problem() -> str | None:
    """Why Core ML lowering cannot run here, or None (a module lookup, no import)."""
    import importlib.util

    for module in ("coremltools", "executorch.backends.apple.coreml"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install coremltools)"
    return None


def check_environment(target: Target) -> None:
    try:
        import coremltools  # noqa: F401
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"Core ML lowering needs coremltools and ExecuTorch's Core ML backend ({exc.name} "
                          "is missing)", fix="pip install coremltools (see ./setup.sh)") from None
    if target.option("compute_units") not in COMPUTE_UNITS:
        raise ExportError(f"target {target.name}: compute_units {target.option('compute_units')!r} is not one "
                          f"of {', '.join(COMPUTE_UNITS)}")


def compile_specs(target: Target, precision: str = "fp16") -> list:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend

    passes = [p for p in ct.PassPipeline.DEFAULT.passes if p not in SKIPPED_PASSES]
    return CoreMLBackend.generate_compile_specs(
        compute_unit=ct.ComputeUnit[target.option("compute_units", "all").upper()],
        minimum_deployment_target=getattr(ct.target, target.option("deployment_target", "iOS18")),
        compute_precision=getattr(ct.precision, PRECISIONS[precision]),
        pass_names=passes,
    )


def partitioners(target: Target) -> list:
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    precision = target.option("dtypes", ("fp16",))[0]
    # With take_over_mutable_buffer the KV cache lives inside Core ML as state (iOS 18+); without it,
    # ExecuTorch owns the cache and passes it in and out of the model at every call.
    return [CoreMLPartitioner(compile_specs=compile_specs(target, precision),
                              take_over_mutable_buffer=bool(target.option("state", False)))]
