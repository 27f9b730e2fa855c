"""Lowering targets: one literal per backend configuration the exporter knows."""
from __future__ import annotations

from dataclasses import dataclass

from llama_mobile.errors import UsageError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # a module in export/backends/
    summary: str
    # Recipe schemes this backend runs as delegated kernels; others would fall back to slow portable ops.
    linear_schemes: tuple[str, ...]
    embedding_schemes: tuple[str, ...]
    min_os: str | None = None
    # Backend-specific settings (Core ML compute units and state, QNN SoC, ...), read by export/backends/.
    options: tuple[tuple[str, object], ...] = ()
    experimental: bool = False

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="xnnpack",
            backend="xnnpack",
            summary="Arm/x86 CPUs through XNNPACK (KleidiAI kernels on Arm): Android and iOS phones",
            linear_schemes=("fp32", "8da4w", "8da8w", "8w"),
            embedding_schemes=("fp32", "8w", "4w"),
        ),
    )
}
DEFAULT_TARGET = "xnnpack"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}", fix=f"use one of: {', '.join(TARGETS)}") from None
