"""Core ML (Apple Neural Engine, GPU, CPU) through ExecuTorch's CoreMLBackend.

The whole program becomes one Core ML model: plain SDPA (Core ML fuses it into its iOS 18
scaled_dot_product_attention op), the KV cache as Core ML state on iOS 18, torchao's int4/int8 weights
as Core ML's constexpr dequantize ops. The torch graph stays fp32; Core ML casts it to the target's
compute precision (its torch frontend does not take fp16 graphs). Lowering runs on Linux; compiling and
running the model needs macOS.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from llama_mobile.core.errors import ExportError
from llama_mobile.core.targets import Target
from llama_mobile.export.backends.base import Backend, Extras, ParityMethod, register
from llama_mobile.export.coreml_package import write_coreml_report

SKIPPED_PASSES = ("common::fuse_linear_bias",)
PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


def compile_specs(target: Target, precision: str = "fp16") -> list:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend

    passes = [p for p in ct.PassPipeline.DEFAULT.passes if p not in SKIPPED_PASSES]
    return CoreMLBackend.generate_compile_specs(
        compute_unit=ct.ComputeUnit[(target.options.compute_units or "all").upper()],
        minimum_deployment_target=getattr(ct.target, target.options.deployment_target or "iOS18"),
        compute_precision=getattr(ct.precision, PRECISIONS[precision]),
        pass_names=passes,
    )


class CoreMLBackend(Backend):
    name = "coreml"
    # ExecuTorch's custom llama ops have no Core ML lowering; the fp16 graph needs an RMSNorm that does not
    # square the residual stream.
    model_options = {"attention_kernel": "sdpa", "rms_norm": "l2"}
    # ExecuTorch's Llama export refuses dynamic shapes with Core ML; one token per call (the runner
    # prefills token by token), the cache's length fixed by the context.
    runner_metadata = {"enable_dynamic_shape": False, "use_sdpa_with_kv_cache": False}
    formats = ("mlpackage",)

    def sdk_problem(self) -> str | None:
        """A module lookup, no import."""
        for module in ("coremltools", "executorch.backends.apple.coreml"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install coremltools)"
        return None

    def check_environment(self, target: Target) -> None:
        try:
            import coremltools  # noqa: F401
            from executorch.backends.apple.coreml.partition import CoreMLPartitioner  # noqa: F401
        except ImportError as exc:
            raise ExportError(f"Core ML lowering needs coremltools and ExecuTorch's Core ML backend ({exc.name} "
                              "is missing)", fix="pip install coremltools (see ./setup.sh)") from None

    def partitioners(self, target: Target) -> list:
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        precision = target.options.dtypes[0]
        # With take_over_mutable_buffer the KV cache lives inside Core ML as state (iOS 18+); without it,
        # ExecuTorch owns the cache and passes it in and out of the model at every call.
        return [CoreMLPartitioner(compile_specs=compile_specs(target, precision),
                                  take_over_mutable_buffer=bool(target.options.state))]

    def write_extras(self, staging: Path, lowered, target: Target, recipe, arch, quantized_layers: int,
                     keep: tuple[str, ...] = ()) -> Extras:
        """The embedded Core ML model's structure, checked on any host; the model.mlpackage itself is kept
        only with --format mlpackage (the parity gate runs it on macOS)."""
        record = write_coreml_report(staging, lowered, target, recipe, arch.n_layers, quantized_layers)
        mlpackage = staging / record["mlpackage"]
        if "mlpackage" not in keep:
            record = {**record, "mlpackage": None}
        return Extras(key="coreml", record=record, gate_input=mlpackage,
                      temporary=None if "mlpackage" in keep else mlpackage)

    def parity_method(self, target: Target) -> str:
        import platform

        return ParityMethod.COREML if platform.system() == "Darwin" else ParityMethod.HOST_SIMULATED


register(CoreMLBackend())
