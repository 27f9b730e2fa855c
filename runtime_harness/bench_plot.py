"""A PNG of a bench report: tokens/s per prompt length, ExecuTorch beside llama.cpp when measured."""
from __future__ import annotations

from pathlib import Path

from llama_mobile.core.atomic import temporary_path
from llama_mobile.core.errors import ResourceError
from llama_mobile.core.reports import OURS, PEER, BenchReport

PANELS = (("prefill_tps", "prefill tokens/s"), ("decode_tps", "decode tokens/s"), ("ttft_ms", "time to first token (ms)"))
COLOURS = {OURS: "#3b6ea5", PEER: "#c26b2f"}


def _label(report: BenchReport, side: str) -> str:
    return f"llama-mobile ({report.runtime} runtime)" if side == OURS else side


def plot_report(report: BenchReport, path: Path) -> Path:
    """Bars of the median with min-max whiskers; written to a temporary name, then renamed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ResourceError("matplotlib is not installed", fix="pip install 'llama-mobile[bench]'") from None
    sides = report.sides
    lengths = list(report.figures[OURS])
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    width = 0.8 / len(sides)
    for axis, (figure_key, title) in zip(axes, PANELS):
        for i, side in enumerate(sides):
            stats = [report.figures[side][length][figure_key] for length in lengths]
            medians = [s["median"] for s in stats]
            errors = [[m - s["min"] for m, s in zip(medians, stats)], [s["max"] - m for m, s in zip(medians, stats)]]
            positions = [x + (i - (len(sides) - 1) / 2) * width for x in range(len(lengths))]
            axis.bar(positions, medians, width, yerr=errors, capsize=3, label=_label(report, side), color=COLOURS[side])
        axis.set_xticks(range(len(lengths)), [f"{length} tok" for length in lengths])
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{Path(report.bundle).name}, {report.threads} threads, median of {report.runs} runs",
                    fontsize=10)
    figure.tight_layout()
    with temporary_path(path) as partial:
        figure.savefig(partial, format="png", dpi=110)
    plt.close(figure)
    return path
