"""The bundle manifest: every key spelled here, a versioned JSON Schema, and verification of files."""
from __future__ import annotations

import json
from pathlib import Path

from llama_mobile.core.errors import BundleError
from llama_mobile.core.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "llama-mobile-bundle"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
SCHEMA_PATH = Path(__file__).parent / "schema" / "manifest.schema.json"


def file_entry(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def schema_problems(manifest: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))]


def read_manifest(bundle: Path) -> dict:
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BundleError("bundle folder not found", path=bundle, fix="pass the folder `llama-mobile export` wrote")
    if not path.exists():
        raise BundleError("manifest.json missing", path=bundle, fix="re-export the bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"manifest is not valid JSON ({exc})", path=path, fix="re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError("not a llama-mobile manifest", path=path, fix="re-export the bundle")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"manifest schema version {version!r} is not supported "
                          f"(this tool reads {list(SUPPORTED_SCHEMA_VERSIONS)})", path=path,
                          fix="use the llama-mobile version that wrote it, or re-export")
    problems = schema_problems(manifest)
    if problems:
        raise BundleError(f"manifest does not match schema {version}: {problems[0]}", path=path,
                          fix="re-export the bundle; do not edit manifest.json by hand")
    return manifest


def verify_bundle(bundle: Path) -> dict:
    """Every listed file exists with its size and SHA-256; returns the manifest."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    runtime = manifest["runtime"]
    for role, name in (("program", runtime["program"]), ("weights", runtime.get("weights"))):
        if name is not None and name not in manifest["files"]:
            raise BundleError(f"runtime.{role} names {name}, which the manifest's files do not list",
                              path=bundle / MANIFEST_NAME, fix="re-export the bundle")
    for name, entry in manifest["files"].items():
        path = bundle / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"file entry {name!r} escapes the bundle", path=bundle / MANIFEST_NAME,
                              fix="re-export the bundle")
        if not path.is_file():
            raise BundleError(f"{name} is missing", path=bundle, fix="copy the whole bundle folder again")
        if path.stat().st_size != entry["size"] or file_entry(path)["sha256"] != entry["sha256"]:
            raise BundleError(f"{name} does not match its SHA-256 in the manifest (modified or corrupt)",
                              path=path, fix="copy the bundle again from the export, or re-export")
    return manifest
