"""Outputs appear whole or not at all: written under a temporary name, fsynced, then renamed."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from llama_mobile.core.errors import OutputError, UsageError
from llama_mobile.core.manifest import BUNDLE_FORMAT, MANIFEST_NAME

# A folder name and nothing else: no separators, no "."/"..", no leading dot (staging folders and
# hidden files start with one), printable ASCII only.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")


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
    previous = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        yield staging
        _fsync_dir(staging)
        if final.exists():
            os.replace(final, previous)
        os.replace(staging, final)
        _fsync_dir(final.parent)
        if previous.exists():
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.lexists(previous) and not os.path.lexists(final):  # stopped between the two renames
            os.replace(previous, final)
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
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # the writer opens it by name: a link left there must not be followed
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


def check_folder_name(name: str, option: str) -> None:
    """A name that stays one folder inside the output folder."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise UsageError(f"{option} {name!r} is not a plain folder name",
                         fix=f"give {option} letters, digits, '_', '-', '+' or '.' (no '/', no leading dot, "
                             "at most 128 characters)")


def bundle_folder(output_dir: Path, name: str, inputs: Mapping[str, Path | None]) -> Path:
    """-o/NAME for a bundle, checked: a plain name, and nothing there (nor at NAME.rejected, where a bundle
    the gate rejects is kept) that this tool did not write or that the run reads."""
    check_folder_name(name, "--name")
    final = Path(output_dir) / name
    for folder in (final, final.with_name(f"{name}.rejected")):
        check_replaceable(folder, ours=is_bundle, what="a bundle this tool wrote", option="--name or -o",
                          inputs=inputs)
    return final


def is_bundle(folder: Path) -> bool:
    """A bundle this tool wrote (or its .rejected copy): a llama-mobile manifest.json."""
    return _json_field(Path(folder) / MANIFEST_NAME, "format") == BUNDLE_FORMAT


def is_pruned_checkpoint(folder: Path) -> bool:
    """A checkpoint `prune` wrote: its config.json carries a llama_mobile section."""
    return _json_field(Path(folder) / "config.json", "llama_mobile") is not None


def _json_field(path: Path, key: str):
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def check_replaceable(final: Path, *, ours: Callable[[Path], bool], what: str, option: str,
                      inputs: Mapping[str, Path | None] | None = None) -> None:
    """staged_directory replaces `final` whole: refuse unless it is absent, an empty folder or something
    this tool wrote (`ours`), and never when it is, holds or lies inside an input of the same run
    (`inputs`: what each is, e.g. "source checkpoint", to its path)."""
    final = Path(final).expanduser()
    target = final.resolve()
    for label, source in (inputs or {}).items():
        if source is None:
            continue
        held = Path(source).expanduser().resolve()
        if target == held or target in held.parents or held in target.parents:
            raise UsageError(f"{final} is, holds or lies inside the {label} ({source})",
                             fix=f"write to another {option}: the folder there is replaced whole")
    if not os.path.lexists(final):
        return
    if final.is_symlink() or not final.is_dir() or (any(final.iterdir()) and not ours(final)):
        raise UsageError(f"{final} exists and is not {what}",
                         fix=f"choose another {option} (the folder there is replaced whole)")


def private_log(name: str) -> int:
    """An append-only descriptor on $TMPDIR/llama-mobile-UID/NAME: a private folder (0700, ours, not a
    link) and a file opened without following links, so nothing planted in a shared /tmp is written to."""
    folder = _private_dir(Path(tempfile.gettempdir()) / f"llama-mobile-{os.getuid()}")
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        os.close(fd)
        raise OutputError("the log file is not a private regular file", path=folder / name,
                          fix="remove it; it is recreated")
    return fd


def _private_dir(folder: Path) -> Path:
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return folder
    return Path(tempfile.mkdtemp(prefix="llama-mobile-"))  # someone else's or loose: a fresh one
