"""What an ExecuTorch backend must and may provide. A backend is one module with one ``Backend`` subclass and
one ``register`` line; the export job asks the backend, never ``if backend == ...``."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llama_mobile.core.targets import Target


class ParityMethod:
    """How the parity gate measures a program (recorded in parity.json; absent means PROGRAM)."""

    PROGRAM = "program"  # the .pte on this host's ExecuTorch runtime
    COREML = "coreml"  # the Core ML model through coremltools (macOS only)
    HOST_SIMULATED = "host-simulated"  # the quantized eager model in the target's precision (off macOS)


@dataclass(frozen=True)
class Extras:
    """Files a backend adds to the bundle, and what the manifest records of them (runtime.<key>)."""

    key: str
    record: dict[str, Any]
    gate_input: Path | None = None  # what the backend's parity method runs, when not the .pte
    temporary: Path | None = None  # written for the checks only: removed before the manifest is hashed


class Backend:
    """Defaults are XNNPACK-like: the program runs on this host's ExecuTorch runtime."""

    name: ClassVar[str]
    # Keyword arguments for export.model.build_model (e.g. plain SDPA where ExecuTorch's LLM ops have no kernel).
    model_options: ClassVar[dict[str, Any]] = {}
    # Constant methods baked into the program beside the generic runner metadata.
    runner_metadata: ClassVar[dict[str, Any]] = {}
    # The backend's own PT2E quantizer quantizes the whole graph (NPUs): recipes need a [pt2e] section.
    quantizes_whole_graph: ClassVar[bool] = False
    # The graph is cast to the recipe's dtype before lowering (else precision is a compile spec).
    casts_model_dtype: ClassVar[bool] = False
    # Weights may live in ExecuTorch's external data file (model.ptd), where a tied matrix is stored once.
    external_weights: ClassVar[bool] = False
    # ExecuTorch's functionalizing re-trace may be deferred (the partitioner decomposes right after).
    defers_functionalization: ClassVar[bool] = False
    # Extra artifacts `export --format` can keep (e.g. "mlpackage").
    formats: ClassVar[tuple[str, ...]] = ()
    # Compiled for one SoC: the target takes its chip from the --device preset.
    needs_chip: ClassVar[bool] = False

    def sdk_problem(self) -> str | None:
        """Why this backend cannot lower here, or None. Cheap: file and module lookups, no heavy import."""
        return None

    def check_environment(self, target: Target) -> None:
        """Raise a one-line error when an SDK or setting is missing; runs before any weight is read."""

    def partitioners(self, target: Target) -> list:
        raise NotImplementedError

    @contextlib.contextmanager
    def lowering_context(self, target: Target) -> Iterator[None]:
        """Speed-ups that hold for the duration of one lowering."""
        yield

    def write_extras(self, staging: Path, lowered, target: Target, recipe, arch, quantized_layers: int,
                     keep: tuple[str, ...] = ()) -> Extras | None:
        """Files beside the program (e.g. Core ML's model report), before the parity gate; ``keep``: the
        --format artifacts the user asked for. None when there are none."""
        return None

    def parity_method(self, target: Target) -> str:
        return ParityMethod.PROGRAM


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend
