"""XNNPACK: the Arm (KleidiAI) and x86 CPU backend every phone runs."""
from __future__ import annotations

from llama_mobile.targets import Target

MODEL_OPTIONS: dict = {}


def check_environment(target: Target) -> None:
    """XNNPACK ships inside the executorch wheel: nothing to check."""


def partitioners(target: Target) -> list:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]
