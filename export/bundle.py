"""Write a bundle folder: model.pte, the tokenizer, parity.json and manifest.json, all or nothing."""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
from importlib import metadata
from pathlib import Path

from llama_mobile import __version__
from llama_mobile.core.atomic import write_file
from llama_mobile.core.errors import ExportError
from llama_mobile.core.manifest import MANIFEST_NAME, FileEntry, Manifest, Tool, schema_problems

PROGRAM_NAME = "model.pte"
WEIGHTS_NAME = "model.ptd"  # ExecuTorch's external weights (program-data separation), when used
PARITY_NAME = "parity.json"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "executorch", "torchao", "coremltools", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def bundle_name(preset: str, recipe: str, target: str) -> str:
    return f"{preset}-{recipe}-{target}"


def write_payload(staging: Path, pte: bytes, tokenizer_path: Path, weights=None) -> Path:
    write_file(staging / PROGRAM_NAME, pte)
    if weights is not None:
        write_file(staging / WEIGHTS_NAME, weights)
    try:
        shutil.copyfile(tokenizer_path, staging / tokenizer_path.name)
    except OSError as exc:
        raise ExportError(f"cannot copy the tokenizer ({exc})", path=tokenizer_path, fix="check the file") from None
    return staging / tokenizer_path.name


def write_json(path: Path, data: dict) -> None:
    write_file(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_manifest(staging: Path, manifest: Manifest) -> Manifest:
    """Hash every file already in the staging folder, then write the manifest last."""
    # Folders (a Core ML model.mlpackage) are listed file by file, by their path inside the bundle.
    files = {p.relative_to(staging).as_posix(): FileEntry.of(p) for p in sorted(staging.rglob("*"))
             if p.is_file() and p != staging / MANIFEST_NAME}
    manifest = dataclasses.replace(
        manifest, files=files, tool=Tool(version=__version__, libraries=library_versions()),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    data = manifest.to_dict()
    problems = schema_problems(data)
    if problems:  # a bug in this tool, not the user's input
        raise ExportError(f"internal error: manifest breaks its schema: {problems[0]}")
    write_json(staging / MANIFEST_NAME, data)
    return manifest
