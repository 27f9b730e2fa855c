"""Lowering targets: one literal per backend configuration the exporter knows."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llama_mobile.core.devices import DEVICES
from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.core.schemes import Scheme


COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_ne", "cpu_and_gpu")  # Core ML's load-time preference
DEPLOYMENT_TARGETS = ("iOS17", "iOS18")
DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TargetOptions:
    """Backend settings, typed; None means the backend does not use the setting. Checked when the registry
    is built, so a misspelt value fails at import, not as a silent default in the middle of an export."""

    dtypes: tuple[str, ...] = ("fp32",)  # what the graph may compute in; the first is the backend's preference
    recipe: str | None = None  # the default recipe when --recipe is not given
    deployment_target: str | None = None  # Core ML
    compute_units: str | None = None  # Core ML
    state: bool | None = None  # Core ML: the KV cache as Core ML state (iOS 18)
    chip: str | None = None  # NPUs: the SoC, from the --device preset

    def problems(self) -> list[str]:
        found = [f"dtype {d!r} is not one of {', '.join(DTYPES)}" for d in self.dtypes if d not in DTYPES]
        if self.compute_units is not None and self.compute_units not in COMPUTE_UNITS:
            found.append(f"compute_units {self.compute_units!r} is not one of {', '.join(COMPUTE_UNITS)}")
        if self.deployment_target is not None and self.deployment_target not in DEPLOYMENT_TARGETS:
            found.append(f"deployment_target {self.deployment_target!r} is not one of {', '.join(DEPLOYMENT_TARGETS)}")
        return found

    def to_dict(self) -> dict:
        """What the manifest records: the settings this target uses."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # a module in export/backends/
    summary: str
    # Recipe schemes this backend runs as delegated kernels; others would fall back to slow portable ops.
    linear_schemes: tuple[Scheme, ...]
    embedding_schemes: tuple[Scheme, ...]
    min_os: str | None = None
    options: TargetOptions = TargetOptions()
    experimental: bool = False


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="xnnpack",
            backend="xnnpack",
            summary="Arm/x86 CPUs through XNNPACK (KleidiAI kernels on Arm): Android and iOS phones",
            linear_schemes=(Scheme.FP32, Scheme.DA8W4, Scheme.DA8W8, Scheme.W8),
            embedding_schemes=(Scheme.FP32, Scheme.W8, Scheme.W4),
            # fp16 runs in XNNPACK's f16 kernels; bf16 lowers but ExecuTorch 1.5's XNNPACK leaves its
            # matmuls to portable kernels (a size/quality baseline, not a fast artifact).
            options=TargetOptions(dtypes=("fp32", "fp16", "bf16")),
        ),
        # NPU targets: the backend's own PT2E quantizer quantizes the whole graph (recipes with a [pt2e]
        # section), so torchao leaves every layer float. The SoC ("chip") comes from --device.
        Target(
            name="qnn-htp",
            backend="qnn",
            summary="Qualcomm Hexagon NPU through QNN (needs the QNN SDK; SoC from --device)",
            linear_schemes=(Scheme.FP32,),
            embedding_schemes=(Scheme.FP32,),
            options=TargetOptions(recipe="qnn-16a4w"),  # the default when --recipe is not given
        ),
        Target(
            name="neuropilot",
            backend="neuropilot",
            summary="MediaTek APU through NeuroPilot (needs the NeuroPilot SDK; platform from --device)",
            linear_schemes=(Scheme.FP32,),
            embedding_schemes=(Scheme.FP32,),
            options=TargetOptions(recipe="neuropilot-16a4w"),  # the default when --recipe is not given
        ),
        Target(
            name="vulkan",
            backend="vulkan",
            summary="experimental: Adreno/Mali GPUs through Vulkan; lowers whole, but this host cannot run it",
            linear_schemes=(Scheme.FP32, Scheme.DA8W4, Scheme.W8),
            embedding_schemes=(Scheme.FP32, Scheme.W8),
            experimental=True,
        ),
        # Core ML (Apple Neural Engine / GPU / CPU). Weights are read weight-only (no dynamic activation
        # quantization); the graph computes in fp16. Int4 block-wise weights and the KV cache as Core ML
        # state need iOS 18. Compute units are a load-time preference: all (Core ML picks), or pinned.
        Target(
            name="coreml-ios17",
            backend="coreml",
            summary="Core ML for iOS 17 / macOS 14: fp16, int8 per-channel weights; KV cache passed in and out",
            linear_schemes=(Scheme.FP32, Scheme.W8),
            embedding_schemes=(Scheme.FP32, Scheme.W8),
            min_os="iOS 17",
            options=TargetOptions(deployment_target="iOS17", compute_units="all", state=False, dtypes=("fp16",),
                                  recipe="coreml-8w"),
        ),
        *(Target(
            name=f"coreml-ios18{suffix}",
            backend="coreml",
            summary=f"Core ML for iOS 18 / macOS 15: stateful KV cache, fused SDPA, int4 block-wise; {units_text}",
            linear_schemes=(Scheme.FP32, Scheme.W8, Scheme.W4),
            embedding_schemes=(Scheme.FP32, Scheme.W8, Scheme.W4),
            min_os="iOS 18",
            options=TargetOptions(deployment_target="iOS18", compute_units=units, state=True, dtypes=("fp16",),
                                  recipe="coreml-int4"),
        ) for suffix, units, units_text in (("", "all", "all compute units"),
                                            ("-cpu-ne", "cpu_and_ne", "CPU + Neural Engine only"),
                                            ("-cpu-gpu", "cpu_and_gpu", "CPU + GPU only"))),
    )
}
DEFAULT_TARGET = "xnnpack"


def check_registry(targets: dict[str, Target]) -> None:
    """Every target's options, when the registry is built (a bad entry is this tool's bug, found at import)."""
    problems = [f"target {t.name}: {p}" for t in targets.values() for p in t.options.problems()]
    if problems:
        raise ConfigError(problems, fix="correct the entry in llama_mobile/core/targets.py")


check_registry(TARGETS)


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}", fix=f"use one of: {', '.join(TARGETS)}") from None


@dataclass(frozen=True)
class VariantSpec:
    """One variant of an `export --targets` bundle: its name in the bundle, the target it lowers to, the
    device preset that binds an NPU target to its SoC, and whether its weights stay inside the program."""

    name: str
    target: str
    device: str | None = None
    single_file: bool = False
    os: str | None = None  # "android" / "ios": the variant is for that OS only (else the backend says)


def _group(name: str) -> list[VariantSpec]:
    """``all-android``: XNNPACK plus an NPU variant per SoC the device registry can compile for;
    ``all-ios``: Core ML (iOS 18) plus XNNPACK in one file (iOS's text runner takes no weights file)."""
    if name == "all-ios":
        return [VariantSpec("coreml-ios18", "coreml-ios18"),
                VariantSpec("xnnpack-ios", "xnnpack", single_file=True, os="ios")]
    npus = {f"{d.npu.target}-{d.npu.chip.lower()}": VariantSpec(f"{d.npu.target}-{d.npu.chip.lower()}", d.npu.target,
                                                                 d.name)
            for d in DEVICES.values() if d.vendor != "Apple" and d.npu and d.npu.target and d.npu.chip}
    return [VariantSpec("xnnpack-android", "xnnpack", os="android"), *npus.values()]


TARGET_GROUPS = ("all-android", "all-ios")


def parse_target_list(value: str) -> list[VariantSpec]:
    """``--targets A,B,...``: targets and groups (all-android, all-ios), two or more different variants in
    the order given."""
    specs: list[VariantSpec] = []
    for name in (t.strip() for t in value.split(",") if t.strip()):
        if name in TARGET_GROUPS:
            specs += [spec for spec in _group(name) if spec not in specs]
        elif name in TARGETS:
            specs.append(VariantSpec(name, name))
        else:
            raise UsageError(f"unknown target {name!r}", fix=f"choose from {', '.join((*TARGETS, *TARGET_GROUPS))} "
                                                           "(`llama-mobile targets`)")
    names = [spec.name for spec in specs]
    if len(specs) < 2 or len(set(names)) != len(names):
        raise UsageError("--targets needs two or more different variants", fix="e.g. --targets xnnpack,coreml-ios18")
    return specs
