"""Device presets: the SoCs a mobile developer names, with the defaults an export for each should use.

Bandwidth is the peak of the memory interface (transfer rate x 64-bit bus unless noted): the plan's
decode figure divides by it, so it is a ceiling, never an expectation. Where several memory speeds
ship with one SoC, the slower one is recorded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llama_mobile.core.errors import UsageError


@dataclass(frozen=True)
class Cores:
    count: int
    name: str  # e.g. "Cortex-X4"; "" when the cluster is absent


@dataclass(frozen=True)
class Npu:
    name: str
    backend: str | None  # the ExecuTorch backend that targets it: "qnn", "neuropilot", "coreml" or None
    note: str = ""
    chip: str | None = None  # the SoC name that backend compiles for (QcomChipset / MediaTek platform)
    target: str | None = None  # the llama-mobile target that lowers to it (`llama-mobile targets`)


@dataclass(frozen=True)
class Device:
    name: str
    vendor: str
    summary: str
    big: Cores
    mid: Cores
    little: Cores
    isa: tuple[str, ...]  # kernel-deciding features: "dotprod", "i8mm", "sve2", "sme2"
    ram_gb: int  # typical phone/tablet with this SoC
    memory: str
    bandwidth_gbs: float
    bandwidth_note: str
    npu: Npu | None
    target: str
    recipe: str
    threads: int
    context: int
    target_reason: str
    recipe_reason: str
    threads_reason: str
    context_reason: str

    @property
    def cores(self) -> int:
        return self.big.count + self.mid.count + self.little.count

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


NO_CORES = Cores(0, "")

XNNPACK_DEFAULT = ("xnnpack: runs on every Arm core without a vendor SDK, and Meta's published Llama 3.2 "
                   "phone numbers are XNNPACK + KleidiAI")
XNNPACK_APPLE = XNNPACK_DEFAULT + "; Core ML (coreml-* targets) reaches the Neural Engine"


def _target_reason(npu: Npu | None) -> str:
    if npu is not None and npu.target:
        return (f"{XNNPACK_DEFAULT}; NPU option: --target {npu.target} ({npu.chip}), which needs the "
                f"vendor SDK at export time and a PT2E recipe")
    why = npu.note if npu is not None and npu.note else "no NPU ExecuTorch targets"
    return f"{XNNPACK_DEFAULT}; NPU option: none ({why})"
INT4_I8MM = ("8da4w-mixed (8da4w g32, int8 value projections and block 0): int8 dynamic activations x "
             "int4 weights in groups of 32 run on KleidiAI's i8mm "
             "kernels in XNNPACK (qd8-f32-qb4w); decode is bandwidth bound and int4 reads ~7x fewer "
             "bytes than fp32")
INT4_SME2 = ("8da4w-mixed (8da4w g32 + a few int8 layers): KleidiAI's int4 groupwise kernels (SME2 and "
             "i8mm variants) in XNNPACK; decode "
             "is bandwidth bound and int4 reads ~7x fewer bytes than fp32")
INT4_DOTPROD = ("8da4w-mixed (8da4w g32 + a few int8 layers) despite no i8mm: XNNPACK/KleidiAI also ship "
                "dotprod int4 kernels, so prefill "
                "is slower than on i8mm cores but decode, which is bandwidth bound, gains most from int4's "
                "halved bytes (8da8w reads twice as much); pick 8da8w only where prompt latency dominates")
THREADS = "big + mid cores; little cores slow every XNNPACK parallel op down to their pace"
CONTEXT_12GB = "4096: a 3B int4 model with a 4K fp32 KV cache needs ~3 GiB of the 4.8 GiB (40% of 12 GB)"
CONTEXT_8GB = ("2048: a 3B int4 model at 2K needs ~2.5 GiB of the 3.2 GiB (40% of 8 GB); "
               "4K would leave under 0.3 GiB of headroom")
CONTEXT_6GB = "1024: 40% of 6 GB is 2.4 GiB, room for 1B models; a 3B int4 fits only at 1K, barely"


def _android(name: str, vendor: str, summary: str, big: Cores, mid: Cores, little: Cores,
             isa: tuple[str, ...], ram_gb: int, memory: str, bandwidth_gbs: float, bandwidth_note: str,
             npu: Npu | None, recipe: str = "8da4w-mixed", recipe_reason: str = INT4_I8MM) -> Device:
    context, context_reason = {6: (1024, CONTEXT_6GB), 8: (2048, CONTEXT_8GB)}.get(
        ram_gb, (4096, CONTEXT_12GB))
    return Device(name=name, vendor=vendor, summary=summary, big=big, mid=mid, little=little, isa=isa,
                  ram_gb=ram_gb, memory=memory, bandwidth_gbs=bandwidth_gbs, bandwidth_note=bandwidth_note,
                  npu=npu, target="xnnpack", recipe=recipe, threads=big.count + mid.count, context=context,
                  target_reason=_target_reason(npu), recipe_reason=recipe_reason, threads_reason=THREADS,
                  context_reason=context_reason)


HEXAGON_NOTE = "ExecuTorch's QNN backend lists {soc}"
APU_NOTE = "ExecuTorch's MediaTek backend lists {soc}"


def _hexagon(soc: str) -> Npu:
    return Npu("Hexagon NPU", "qnn", HEXAGON_NOTE.format(soc=soc), chip=soc, target="qnn-htp")


def _apu(name: str, platform: str) -> Npu:
    return Npu(name, "neuropilot", APU_NOTE.format(soc=platform), chip=platform, target="neuropilot")
# Qualcomm firmware does not expose SVE to apps on 8 Gen 3 (llama.cpp #10906 had to switch it off
# there); Oryon has no SVE. The Arm cores of other vendors are recorded with SVE2 as designed.
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        _android(
            "snapdragon-8-gen-3", "Qualcomm", "Snapdragon 8 Gen 3 (SM8650): Galaxy S24 Ultra, OnePlus 12",
            Cores(1, "Cortex-X4"), Cores(5, "Cortex-A720"), Cores(2, "Cortex-A520"),
            ("dotprod", "i8mm"), 12, "LPDDR5X-9600 (4800 MHz), 64-bit", 76.8,
            "Qualcomm: LPDDR5X up to 4800 MHz",
            _hexagon("SM8650"),
        ),
        _android(
            "snapdragon-8-elite", "Qualcomm", "Snapdragon 8 Elite (SM8750): Galaxy S25, OnePlus 13",
            Cores(2, "Oryon (prime)"), Cores(6, "Oryon (performance)"), NO_CORES,
            ("dotprod", "i8mm"), 12, "LPDDR5X-10600 (5300 MHz), 64-bit", 84.8,
            "Qualcomm: LPDDR5X up to 5300 MHz",
            _hexagon("SM8750"),
        ),
        _android(
            "snapdragon-7-gen-3", "Qualcomm", "Snapdragon 7 Gen 3 (SM7550): upper mid-range phones",
            Cores(1, "Cortex-A715"), Cores(3, "Cortex-A715"), Cores(4, "Cortex-A510"),
            ("dotprod", "i8mm"), 8, "LPDDR5-6400 (3200 MHz), 64-bit", 51.2,
            "Qualcomm: LPDDR5 up to 3200 MHz",
            Npu("Hexagon NPU", "qnn", "SM7550 is not in ExecuTorch's QNN SoC list (SM8350 and newer 8-series)"),
        ),
        _android(
            "dimensity-9300", "MediaTek", "Dimensity 9300 (MT6989): vivo X100, OPPO Find X7",
            Cores(4, "Cortex-X4"), Cores(4, "Cortex-A720"), NO_CORES,
            ("dotprod", "i8mm", "sve2"), 12, "LPDDR5T-9600, 64-bit", 76.8,
            "MediaTek: LPDDR5T 9600 Mbps",
            _apu("APU 790", "mt6989"),
        ),
        _android(
            "dimensity-9400", "MediaTek", "Dimensity 9400 (MT6991): vivo X200, OPPO Find X8",
            Cores(4, "Cortex-X925 (1) + Cortex-X4 (3)"), Cores(4, "Cortex-A720"), NO_CORES,
            ("dotprod", "i8mm", "sve2"), 12, "LPDDR5X-10667, 64-bit", 85.3,
            "MediaTek: LPDDR5X 10.7 Gbps",
            _apu("NPU 890", "mt6991"),
        ),
        _android(
            "dimensity-8300", "MediaTek", "Dimensity 8300 (MT6897): POCO X6 Pro, Redmi K70E",
            Cores(1, "Cortex-A715"), Cores(3, "Cortex-A715"), Cores(4, "Cortex-A510"),
            ("dotprod", "i8mm", "sve2"), 8, "LPDDR5X-8533, 64-bit", 68.3,
            "MediaTek: LPDDR5X 8533 Mbps",
            Npu("APU 780", "neuropilot", "MT6897 is not in ExecuTorch's MediaTek platform list"),
        ),
        _android(
            "tensor-g4", "Google", "Tensor G4: Pixel 9, Pixel 9 Pro",
            Cores(1, "Cortex-X4"), Cores(3, "Cortex-A720"), Cores(4, "Cortex-A520"),
            ("dotprod", "i8mm", "sve2"), 12, "LPDDR5X (speed unpublished), 64-bit", 68.3,
            "estimate: Google publishes no memory speed; LPDDR5X-8533 assumed",
            Npu("Google TPU", None, "no ExecuTorch backend targets it"),
        ),
        _android(
            "exynos-2400", "Samsung", "Exynos 2400: Galaxy S24 / S24+ outside the US and China",
            Cores(1, "Cortex-X4"), Cores(5, "Cortex-A720"), Cores(4, "Cortex-A520"),
            ("dotprod", "i8mm", "sve2"), 8, "LPDDR5X-8533, 64-bit", 68.3,
            "estimate: Samsung states LPDDR5X; 8.5 Gbps reported at launch",
            Npu("Samsung NPU", None, "ExecuTorch's Samsung backend targets Exynos 2500 (E9955) and newer"),
        ),
        Device(
            name="apple-a17-pro", vendor="Apple", summary="A17 Pro: iPhone 15 Pro / Pro Max",
            big=Cores(2, "Apple P-core (A17)"), mid=NO_CORES, little=Cores(4, "Apple E-core (A17)"),
            isa=("dotprod", "i8mm"), ram_gb=8, memory="LPDDR5-6400, 64-bit", bandwidth_gbs=51.2,
            bandwidth_note="estimate: Apple publishes no figure; LPDDR5-6400 x 64-bit as reported",
            npu=Npu("Apple Neural Engine (16-core)", "coreml"), target="xnnpack", recipe="8da4w-mixed",
            threads=2, context=2048, target_reason=XNNPACK_APPLE, recipe_reason=INT4_I8MM,
            threads_reason=THREADS, context_reason=CONTEXT_8GB,
        ),
        Device(
            name="apple-m4", vendor="Apple", summary="M4: iPad Pro (2024), iPad Air/Mac with M4",
            big=Cores(4, "Apple P-core (M4)"), mid=NO_CORES, little=Cores(6, "Apple E-core (M4)"),
            isa=("dotprod", "i8mm", "sme2"), ram_gb=8, memory="LPDDR5X-7500, 128-bit", bandwidth_gbs=120.0,
            bandwidth_note="Apple: 120 GB/s unified memory bandwidth",
            npu=Npu("Apple Neural Engine (16-core)", "coreml"), target="xnnpack", recipe="8da4w-mixed",
            threads=4, context=2048, target_reason=XNNPACK_APPLE, recipe_reason=INT4_SME2,
            threads_reason=THREADS, context_reason=CONTEXT_8GB,
        ),
        _android(
            "arm-v8.2-generic", "Arm", "Armv8.2 phone without i8mm (Snapdragon 855/865-class, Cortex-A76/A55)",
            Cores(1, "Cortex-A76"), Cores(3, "Cortex-A76"), Cores(4, "Cortex-A55"),
            ("dotprod",), 6, "LPDDR4X-4266, 64-bit", 34.1,
            "LPDDR4X-4266 x 64-bit, the common configuration of that generation",
            None, recipe="8da4w-mixed", recipe_reason=INT4_DOTPROD,
        ),
        _android(
            "arm-v9-generic", "Arm", "Armv9.0 phone (Snapdragon 8 Gen 1 / Dimensity 9000-class, X2/A710/A510)",
            Cores(1, "Cortex-X2"), Cores(3, "Cortex-A710"), Cores(4, "Cortex-A510"),
            ("dotprod", "i8mm", "sve2"), 8, "LPDDR5-6400, 64-bit", 51.2,
            "LPDDR5-6400 x 64-bit, the common configuration of that generation",
            None,
        ),
    )
}


def get_device(name: str) -> Device:
    try:
        return DEVICES[name]
    except KeyError:
        raise UsageError(f"unknown device {name!r}", fix=f"use one of: {', '.join(DEVICES)}") from None
