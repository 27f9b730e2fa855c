"""Typed reads of JSON config files that collect every problem before failing."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llama_mobile.core.errors import CheckpointError, ConfigError, UsageError

# Config files are small (Llama 3's config.json: 1 KB; a pruned model's with its kept vocabulary: a few MB).
MAX_JSON_BYTES = 64 << 20
MAX_TEXT_BYTES = 256 << 20


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def parse_json(text: str):
    """Strict JSON: NaN/Infinity, out-of-range numbers, integers of thousands of digits and nesting deep
    enough to exhaust the stack all raise ValueError (never another exception)."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_user_text(path: Path, *, error: type = UsageError, what: str = "text file",
                   fix: str = "pass a UTF-8 text file", limit: int = MAX_TEXT_BYTES) -> str:
    """A text file a user named: missing, a folder, unreadable, too large or not UTF-8 is one-line `error`."""
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"is a folder, not a {what}", path=path, fix=fix)
        size = path.stat().st_size
        if size > limit:
            raise error(f"{what} of {size:,} bytes is larger than this tool reads ({limit:,})", path=path, fix=fix)
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found", path=path, fix=fix) from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 (byte {exc.start})", path=path, fix=fix) from None
    except OSError as exc:
        raise error(f"cannot read the {what} ({exc.strerror or exc})", path=path, fix=fix) from None


def read_json_object(path: Path, *, missing: type = CheckpointError, invalid: type = ConfigError,
                     fix: str = "restore the file from the download") -> dict:
    if not path.exists():
        raise missing("file not found", path=path, fix=f"the checkpoint folder needs {path.name}")
    text = read_user_text(path, error=invalid, what="JSON file", fix=fix, limit=MAX_JSON_BYTES)
    try:
        data = parse_json(text)
    except ValueError as exc:
        raise invalid(f"not valid JSON ({str(exc)[:200]})", path=path, fix=fix) from None
    if not isinstance(data, dict):
        raise invalid("must hold a JSON object", path=path, fix=fix)
    return data


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**50 else f"<{value.bit_length()}-bit integer>"
    return text if len(text) <= limit else text[:limit] + "..."


class FieldReader:
    """Reads fields of one JSON object; problems accumulate and `done()` raises them together."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path
        self.problems: list[str] = []

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, positive: bool = False):
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.problems.append(f"missing field {key!r}")
            return None if default is ... else default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = abs(value) < 1 << 1000, float(value) if abs(value) < 1 << 1000 else value
        else:
            ok = isinstance(value, kinds)
        if ok and kinds == (int, list) and isinstance(value, list):  # a list of token ids
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok:
            names = "/".join(k.__name__ for k in kinds) + (" of integers" if list in kinds else "")
            self.problems.append(f"field {key!r} must be {names}, got {type(value).__name__} {short_repr(value)}")
            return None
        if positive and value <= 0:
            self.problems.append(f"field {key!r} must be positive, got {short_repr(value)}")
            return None
        return value

    def token_ids(self, key: str, vocab_size: int | None) -> tuple[int, ...] | None:
        """A token id or a list of them (eos_token_id), each in 0..vocab_size-1."""
        value = self.get(key, (int, list), None)
        if value is None:
            return None
        ids = (value,) if isinstance(value, int) else tuple(value)
        limit = vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else 1 << 31
        if not ids or any(not 0 <= i < limit for i in ids):
            self.problems.append(f"field {key!r} must hold token ids in 0..{limit - 1}, got {short_repr(value)}")
            return None
        return ids

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def done(self, fix: str) -> None:
        if self.problems:
            raise ConfigError(self.problems, path=self.path, fix=fix)
