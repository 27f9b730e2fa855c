"""Outputs appear whole or not at all: written under a temporary name, fsynced, then renamed."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from llama_mobile.core.errors import OutputError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _output_error(exc: OSError, path: Path) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError("disk full while writing", path=path, fix="free space or choose another -o folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError("output location is not writable", path=path, fix="choose a writable -o folder")
    return OutputError(f"cannot write ({exc.strerror or exc})", path=path, fix="check the -o folder")


def write_file(path: Path, data) -> None:
    """A file inside a staging folder: the folder's rename is what makes it visible. ``data`` is bytes
    or anything with ``write_to_file(handle)`` (ExecuTorch's Cord: a large file in pieces)."""
    try:
        with open(path, "wb") as handle:
            if hasattr(data, "write_to_file"):
                data.write_to_file(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _output_error(exc, path) from None


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; on success it replaces `final` in one rename.

    On any failure (including KeyboardInterrupt) the staging folder is removed and a previous
    `final` stays untouched.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise _output_error(exc, final.parent) from None
    try:
        yield staging
        _fsync_dir(staging)
        previous = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, previous)
        os.replace(staging, final)
        _fsync_dir(final.parent)
        if previous.exists():
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _output_error(exc, final) from None
        raise


def check_writable(folder: Path) -> None:
    """Fail before hours of work, not after."""
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{probe_dir} is a file, not a folder", path=folder, fix="choose another -o folder")
    if not os.access(probe_dir, os.W_OK):
        raise OutputError("output location is not writable", path=folder, fix="choose a writable -o folder")


@contextlib.contextmanager
def temporary_path(final: Path) -> Iterator[Path]:
    """A path beside `final` for a writer that opens files by name; renamed to `final` when the block
    completes, removed when it fails."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _output_error(exc, final) from None
        raise
