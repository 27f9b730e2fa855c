"""What every command shares: quiet libraries, one-line errors with their exit codes, progress on stderr."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from llama_mobile.core.errors import INTERRUPTED_EXIT_CODE, LlamaMobileError


def quiet_libraries() -> None:
    """torchao logs every optional CUDA extension it cannot load; none matter on a CPU host."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    for name in ("torch", "torch.utils._pytree", "coremltools", "executorch.backends.apple.coreml"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _route_native_logs()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "llama-mobile-inductor"))
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pass progress bars; stages report progress
    import warnings

    warnings.filterwarnings("ignore")


_native_logs_routed = False


def _route_native_logs() -> None:
    """ExecuTorch's and the tokenizers' C++ code log to fd 2 at every step. Keep the terminal for
    this tool's own messages: fd 2 goes to a log file, Python's stderr keeps the terminal.
    Set LLAMA_MOBILE_NATIVE_LOGS=1 to see them."""
    global _native_logs_routed
    if os.environ.get("LLAMA_MOBILE_NATIVE_LOGS") == "1" or _native_logs_routed:
        return
    _native_logs_routed = True
    import tempfile

    try:
        terminal = os.dup(2)
        log_path = Path(tempfile.gettempdir()) / f"llama-mobile-native-{os.getuid()}.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")


def say(line: str) -> None:
    click.echo(line, err=True)


class Cli(click.Group):
    """Turns the project's errors into one line on stderr and their documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LlamaMobileError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written (any previous bundle is intact)", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)



class PresetOrFolder(click.Choice):
    """A preset name, or a checkpoint folder (a pruned model): then --model llama --checkpoint FOLDER."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value not in self.choices and Path(value).expanduser().is_dir():
            return value
        return super().convert(value, param, ctx)
