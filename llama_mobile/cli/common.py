"""What every command shares: quiet libraries, one-line errors with their exit codes, progress on stderr."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

import click

from llama_mobile.core.atomic import PLAIN_NAME, private_log
from llama_mobile.core.errors import INTERRUPTED_EXIT_CODE, LlamaMobileError

# Stopping signals handled like Ctrl-C: a CI cancellation or `docker stop` sends SIGTERM, a closed
# terminal SIGHUP.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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
    try:
        log_fd = private_log("native.log")
        terminal = os.dup(2)
    except (OSError, LlamaMobileError):
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
            with stop_signals_interrupt():
                return super().invoke(ctx)
        except LlamaMobileError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Stopped as exc:
            click.echo(f"stopped by {signal.Signals(exc.signum).name}: nothing was written "
                       "(any previous bundle is intact)", err=True)
            sys.exit(128 + exc.signum)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written (any previous bundle is intact)", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process is, so the same cleanup as Ctrl-C runs: staging
    folders removed, child processes killed by subprocess.run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_signals_interrupt():
    def stop(signum, frame):
        for other in STOP_SIGNALS:  # a second signal must not cut the cleanup short
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class PresetOrFolder(click.Choice):
    """A preset name, or a checkpoint folder (a pruned model): then --model llama --checkpoint FOLDER."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value not in self.choices and Path(value).expanduser().is_dir():
            return value
        return super().convert(value, param, ctx)


# Option types that refuse what would otherwise fail later with another exit code, or be silently
# replaced by a default: every refusal is click's usage error (exit 2) naming the option.


class Text(click.ParamType):
    """A string with something in it."""

    name = "text"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or not value.strip():
            self.fail("must not be empty", param, ctx)
        return value


class Finite(click.ParamType):
    """A float that is a number (not nan, not inf), optionally bounded."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        number = value if isinstance(value, float) else _float(self, value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            self.fail(f"{value} is not {'>' if self.low_open else '>='} {self.low}", param, ctx)
        if self.high is not None and number > self.high:
            self.fail(f"{value} is not <= {self.high}", param, ctx)
        return number


def _float(kind: click.ParamType, value, param, ctx) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        kind.fail(f"{value!r} is not a number", param, ctx)


class PlainName(Text):
    """A folder name that stays inside the output folder: no '/', no '..', no leading dot."""

    name = "name"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not PLAIN_NAME.fullmatch(value):
            self.fail(f"{value!r} is not a plain folder name (letters, digits, '_', '-', '+', '.'; no '/', "
                      "no leading dot; at most 128 characters)", param, ctx)
        return value


class FilePath(click.Path):
    """click.Path that refuses an empty string (which would mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("must not be empty", param, ctx)
        return super().convert(value, param, ctx)


class IntList(click.ParamType):
    """Comma-separated integers, at least one, each >= low."""

    name = "integers"

    def __init__(self, low: int):
        self.low = low

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        try:
            numbers = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not numbers:
            self.fail("must not be empty", param, ctx)
        if min(numbers) < self.low:
            self.fail(f"{min(numbers)} is below {self.low}", param, ctx)
        return numbers
