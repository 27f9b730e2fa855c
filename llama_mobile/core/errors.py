"""The project's exceptions. Each kind carries the exit code the CLI returns for it.

Library code raises these; only the CLI prints them (one line on stderr) and exits.
Exit codes are documented in README.md and are part of the CLI's contract.
"""
from __future__ import annotations


class LlamaMobileError(Exception):
    """Base class: a user-facing failure with a one-line message that names the file and the fix."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, fix: str | None = None):
        self.path = str(path) if path is not None else None
        self.fix = fix
        parts = [f"{self.path}: {message}" if self.path else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" — ".join(parts))


class UsageError(LlamaMobileError):
    """Unknown model, recipe, target or an option combination that cannot work."""

    exit_code = 2


class CheckpointError(LlamaMobileError):
    """A checkpoint that is missing, truncated, unsafe, or does not match its architecture."""

    exit_code = 3


class ConfigError(LlamaMobileError):
    """params.json / config.json / a recipe with missing, wrong-typed or inconsistent fields.

    Carries every problem found, so a user fixes them all in one go.
    """

    exit_code = 4

    def __init__(self, problems: list[str] | str, *, path: str | None = None, fix: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems), path=path, fix=fix)


class TokenizerError(LlamaMobileError):
    exit_code = 5


class ExportError(LlamaMobileError):
    """torch.export, quantization or lowering failed."""

    exit_code = 6


class OutputError(LlamaMobileError):
    """The output location cannot be written (permissions, disk full)."""

    exit_code = 7


class BundleError(LlamaMobileError):
    """A bundle that is incomplete, tampered with, or of a schema this tool does not know."""

    exit_code = 8


class RuntimeFailure(LlamaMobileError):
    """The ExecuTorch runtime could not load or run a program, or a prompt does not fit the context."""

    exit_code = 9


class ParityFailure(LlamaMobileError):
    """The artifact is further from the reference than the recipe's thresholds allow."""

    exit_code = 10


class ResourceError(LlamaMobileError):
    """The machine cannot hold the work (memory preflight) or an SDK the target needs is absent."""

    exit_code = 11


INTERRUPTED_EXIT_CODE = 130
