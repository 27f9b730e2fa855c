"""Time to switch a LoRA adapter against loading a whole model, on ExecuTorch's C++ runtime (no Python, no
torch in the measured process), with and without XNNPACK's weights cache.

    .venv/bin/python bench/adapter_switch.py BUNDLE [--adapter NAME] [--runs 3]

BUNDLE comes from `llama-mobile export --adapter NAME=PATH`. Each run is a fresh process of
bench/adapter_switch.cpp (built once with the native runner's compiler, flags and ExecuTorch's own LLM op
kernels). Prints medians; run it on an idle machine. The adapter's first-token logits must be the same in
every mode (the cache shares packed weights; it must change no output), else the script exits 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llama_mobile.core.bundle import verify_bundle  # noqa: E402
from llama_mobile.runtime_harness.native_runner import KERNELS, build_command, cache_dir, compiler  # noqa: E402

SOURCE = Path(__file__).with_suffix(".cpp")
MODES = {"no cache": [], "no cache, base freed first": ["--drop-base"], "weights cache": ["--weight-cache"],
         "weights cache, base freed first": ["--weight-cache", "--drop-base"]}


def build() -> Path:
    binary = cache_dir() / "adapter_switch"
    if binary.exists() and binary.stat().st_mtime > SOURCE.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    runner_source = str(KERNELS["executorch"].sources[0])  # the bench runner's main: this probe replaces it
    command = [str(SOURCE) if part == runner_source else part for part in build_command(compiler(), binary)]
    subprocess.run(command, check=True, capture_output=True)
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bundle = verify_bundle(args.bundle)
    names = [a["name"] for a in bundle.manifest.adapters or ()]
    if not names:
        sys.exit(f"{args.bundle}: no adapters (export with --adapter NAME=PATH)")
    adapter = bundle.adapter_program(args.adapter or names[0])
    binary = build()
    sums, rows = set(), []
    for mode, flags in MODES.items():
        runs = [json.loads(subprocess.run([str(binary), str(bundle.program), str(adapter), str(bundle.weights), *flags],
                                          check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(args.runs)]
        sums |= {round(r["adapter_logit_sum"], 3) for r in runs}
        rows.append((mode, *(statistics.median(r[k] for r in runs)
                             for k in ("base_load_ms", "adapter_load_ms", "hwm_mib"))))
    print(f"{bundle.path.name}, adapter {adapter.stem}, median of {args.runs} fresh processes")
    print(f"{'mode':34s} {'load base + 1 token':>20s} {'then adapter + 1 token':>23s} {'peak RSS':>10s}")
    for mode, base_ms, adapter_ms, hwm in rows:
        print(f"{mode:34s} {base_ms:17.1f} ms {adapter_ms:20.1f} ms {hwm:6.0f} MiB")
    if len(sums) != 1:
        print(f"the adapter's logits differ between modes: {sorted(sums)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
