"""Typed reads of JSON config files that collect every problem before failing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama_mobile.core.errors import CheckpointError, ConfigError


def read_json_object(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError("file not found", path=path, fix=f"the checkpoint folder needs {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid JSON ({exc})", path=path, fix="restore the file from the download") from None
    if not isinstance(data, dict):
        raise ConfigError("must hold a JSON object", path=path, fix="restore the file from the download")
    return data


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
            ok, value = True, float(value)
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = "/".join(k.__name__ for k in kinds)
            self.problems.append(f"field {key!r} must be {names}, got {type(value).__name__} {value!r}")
            return None
        if positive and value <= 0:
            self.problems.append(f"field {key!r} must be positive, got {value!r}")
            return None
        return value

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def done(self, fix: str) -> None:
        if self.problems:
            raise ConfigError(self.problems, path=self.path, fix=fix)
