"""The pruning record: a short entry for the model's history (carried into bundle manifests) and the
full prune_report.json (what was removed, the measured importance, quality before and after)."""
from __future__ import annotations

import datetime

from llama_mobile.core.architecture import Architecture

REPORT_NAME = "prune_report.json"


def shape_summary(arch: Architecture) -> dict:
    return {"n_layers": arch.n_layers, "n_heads": arch.n_heads, "n_kv_heads": arch.n_kv_heads,
            "head_dim": arch.head_dim, "ffn_hidden": [arch.ffn_hidden_of(i) for i in range(arch.n_layers)],
            "output_rows": arch.output_rows, "parameters": arch.param_count()}


def history_entry(source: dict, before: Architecture, after: Architecture, removed: dict, quality: dict) -> dict:
    """What a bundle manifest's model.history says about this step (compact: no per-neuron data)."""
    return {
        "step": "prune",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "before": shape_summary(before),
        "after": shape_summary(after),
        "removed": removed,
        "quality": quality,
    }


def full_report(entry: dict, importance: dict | None, calibration: dict, distillation: dict | None,
                seconds: dict) -> dict:
    return {**entry, "importance": importance, "calibration": calibration, "distillation": distillation,
            "seconds": seconds}
