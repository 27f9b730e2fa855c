"""A verified bundle: what every reader (generate, validate, guard, bench, the peer) opens, and nothing else.

A bundle is closed: every file a reader opens is named in the manifest by a plain name and hashed there.
The weights file comes from the manifest, never from what happens to lie in the folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llama_mobile.core.errors import BundleError, UsageError
from llama_mobile.core.manifest import MANIFEST_NAME, FileEntry, Manifest, read_manifest
from llama_mobile.core.presets import ChatTemplate

GUARD_TASK = "guard"


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def program(self) -> Path:
        return self.path / self.manifest.runtime.program

    @property
    def weights(self) -> Path | None:
        name = self.manifest.runtime.weights
        return self.path / name if name else None

    def variant_files(self, target: str) -> tuple[Path, Path | None]:
        """(program, weights) of the variant for ``target`` (export --targets)."""
        variant = self.manifest.variant(target)
        if variant is None or variant["status"] != "ok":
            ok = [v["target"] for v in self.manifest.variants or () if v["status"] == "ok"]
            why = f"its {target} variant was skipped: {variant['reason']}" if variant else f"no {target} variant"
            raise UsageError(f"the bundle has {why}", path=self.path,
                             fix=f"use one of: {', '.join(ok)}" if ok else "export with --targets")
        weights = variant.get("weights")
        return self.path / variant["program"], self.path / weights if weights else None

    def adapter_program(self, name: str) -> Path:
        """The program of LoRA adapter ``name`` (it reads the same weights file as the base program)."""
        entry = self.manifest.adapter(name)
        if entry is None:
            names = [a["name"] for a in self.manifest.adapters or ()]
            raise UsageError(f"the bundle has no adapter {name!r}", path=self.path,
                             fix=f"use one of: {', '.join(names)}" if names else "export with --adapter NAME=PATH")
        return self.path / entry["program"]

    @property
    def tokenizer(self) -> Path:
        return self.path / self.manifest.tokenizer.file

    @property
    def chat_template(self) -> ChatTemplate:
        return self.manifest.prompt_template

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(self.manifest.special_tokens.eos_ids)

    @property
    def stop_names(self) -> tuple[str, ...]:
        """The names of the stop tokens, for hiding them from streamed text."""
        specials = self.manifest.special_tokens
        return tuple(name for name, token_id in specials.names.items() if token_id in specials.eos_ids)

    @property
    def task(self) -> str:
        return self.manifest.model.task

    @property
    def is_guard(self) -> bool:
        return self.task == GUARD_TASK

    @property
    def backend(self) -> str:
        return self.manifest.target.backend

    @property
    def context_length(self) -> int:
        return self.manifest.runtime.context_length


def plain_name(name: str) -> bool:
    """A file directly inside the bundle: no folder, no parent, no hidden file, no Windows separator."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") \
        and not name.startswith(".") and "\0" not in name


def inside(name: str) -> bool:
    """A listed file (a Core ML package is listed file by file): relative, without '..', no backslash."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name \
        and "\0" not in name and not name.startswith("/")


def verify_bundle(path: Path) -> Bundle:
    """The manifest against its schema, every role it names against its files, every file against its
    size and SHA-256, and no file in the folder that the manifest does not list."""
    path = Path(path)
    manifest = read_manifest(path)
    where = path / MANIFEST_NAME
    roles = {"runtime.program": manifest.runtime.program, "runtime.weights": manifest.runtime.weights,
             "tokenizer.file": manifest.tokenizer.file}
    adapters = {f"adapters[{a['name']}].program": a["program"] for a in manifest.adapters or ()}
    if len(adapters) != len(manifest.adapters or ()):
        raise BundleError("the manifest lists an adapter name twice", path=where, fix="re-export the bundle")
    if adapters and manifest.runtime.weights is None:
        raise BundleError("the manifest lists adapters but no base weights file", path=where, fix="re-export the bundle")
    variants = {f"variants[{v['target']}].{key}": v.get(key) for v in manifest.variants or ()
                for key in ("program", "weights")}
    if len(variants) != 2 * len(manifest.variants or ()):
        raise BundleError("the manifest lists a variant twice", path=where, fix="re-export the bundle")
    for role, name in {**roles, **adapters, **variants}.items():
        if name is None:
            continue
        if not (plain_name(name) if role in roles else inside(name)):
            raise BundleError(f"{role} {name!r} is not a plain file name inside the bundle", path=where,
                              fix="re-export the bundle; a manifest may not point outside its folder")
        if name not in manifest.files:
            raise BundleError(f"{role} names {name}, which the manifest's files do not list", path=where,
                              fix="re-export the bundle")
    for name, entry in manifest.files.items():
        if not inside(name):
            raise BundleError(f"file entry {name!r} escapes the bundle", path=where, fix="re-export the bundle")
        _check_file(path, name, entry)
    listed = set(manifest.files) | {MANIFEST_NAME}
    for found in sorted(path.rglob("*")):
        relative = found.relative_to(path).as_posix()
        hidden = any(part.startswith(".") for part in PurePosixPath(relative).parts)
        if (found.is_file() or found.is_symlink()) and relative not in listed and not hidden:
            raise BundleError(f"{relative} is not listed in the manifest", path=found,
                              fix="remove the file: a bundle holds only the files its manifest hashes")
    return Bundle(path=path, manifest=manifest)


def _check_file(bundle: Path, name: str, entry: FileEntry) -> None:
    file = bundle / name
    if file.is_symlink() or not file.is_file():
        raise BundleError(f"{name} is missing" if not file.exists() else f"{name} is not a regular file",
                          path=bundle, fix="copy the whole bundle folder again")
    if file.stat().st_size != entry.size or FileEntry.of(file).sha256 != entry.sha256:
        raise BundleError(f"{name} does not match its SHA-256 in the manifest (modified or corrupt)",
                          path=file, fix="copy the bundle again from the export, or re-export")
