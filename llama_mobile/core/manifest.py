"""The bundle manifest as typed data: every key spelled here, validated against the versioned JSON Schema
that the Kotlin and Swift cores share, read and written only through ``Manifest.from_dict``/``to_dict``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llama_mobile.core.errors import BundleError
from llama_mobile.core.hashing import sha256_file
from llama_mobile.core.presets import ChatTemplate, SpecialTokens

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "llama-mobile-bundle"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1, 2)  # 2: a bundle with variants (export --targets)
SCHEMA_PATH = Path(__file__).parent / "schema" / "manifest.schema.json"
TOOL_NAME = "llama-mobile"


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        return cls(size=path.stat().st_size, sha256=sha256_file(path))


@dataclass
class Tool:
    version: str
    libraries: dict[str, str]
    name: str = TOOL_NAME


@dataclass
class ModelInfo:
    preset: str
    task: str
    architecture: dict[str, Any]  # Architecture.to_dict()
    source: dict[str, Any]  # {"format", "files": [{"path", "size", "sha256"}]}
    history: list[dict] = field(default_factory=list)

    @property
    def source_format(self) -> str:
        return self.source["format"]

    @property
    def source_paths(self) -> list[Path]:
        return [Path(entry["path"]) for entry in self.source["files"]]


@dataclass
class TargetInfo:
    name: str
    backend: str
    min_os: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttentionSink:
    """runtime.attention_sink (``export --attention-sink SINK,WINDOW``): the program keeps the first
    ``sink_size`` positions and a ring of 2 x ``window_size`` after them, and attends to the sinks plus the
    last ``window_size`` positions. It takes any position: the conversation has no end of context, and
    runners skip the drop-oldest context policy. Bundles without it have a hard end at context_length."""
    sink_size: int
    window_size: int

    MIN_WINDOW: ClassVar[int] = 16

    @property
    def cache_size(self) -> int:
        return self.sink_size + 2 * self.window_size

    @property
    def exact_positions(self) -> int:
        """Positions up to which the window is full attention over everything (sinks + window)."""
        return self.sink_size + self.window_size

    def problems(self) -> list[str]:
        found = []
        for name in ("sink_size", "window_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                found.append(f"{name} {value!r} is not an integer")
        if found:
            return found
        if self.sink_size < 1:
            found.append(f"the sink must be at least 1 token, not {self.sink_size}")
        if self.window_size < self.MIN_WINDOW:
            found.append(f"the window must be at least {self.MIN_WINDOW} tokens, not {self.window_size}")
        return found


@dataclass
class RuntimeInfo:
    program: str
    context_length: int
    max_seq_len: int
    weights: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the constant methods baked into the program
    delegated_calls: int = 0
    tokens_per_call: dict[str, int] = field(default_factory=dict)
    # What a backend records of the files it adds (runtime.coreml: the Core ML model's summary).
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops_outside_delegates: dict[str, int] = field(default_factory=dict)
    ops_in_delegates: int = 0
    delegated_share: float = 0.0
    attention_sink: AttentionSink | None = None  # written only when the program has one


@dataclass
class TokenizerInfo:
    file: str
    kind: str


@dataclass
class Manifest:
    tool: Tool
    model: ModelInfo
    recipe: dict[str, Any]  # Recipe.to_dict() + torchao's versioned config dicts
    target: TargetInfo
    runtime: RuntimeInfo
    tokenizer: TokenizerInfo
    special_tokens: SpecialTokens
    prompt_template: ChatTemplate
    files: dict[str, FileEntry] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None  # the Guard prompt format, for Guard bundles
    device: dict[str, Any] | None = None  # the device preset and its plan, with --device
    # LoRA adapters: each a program (under adapters/) over the base weights file, with its gate result
    adapters: list[dict[str, Any]] | None = None
    # export --targets: one entry per target (schema version 2); the top-level program is the first's
    variants: list[dict[str, Any]] | None = None
    created: str | None = None
    schema_version: int = SCHEMA_VERSION

    def variant(self, target: str) -> dict[str, Any] | None:
        return next((v for v in self.variants or () if v["target"] == target), None)

    def adapter(self, name: str) -> dict[str, Any] | None:
        return next((a for a in self.adapters or () if a["name"] == name), None)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    # The recipe section is the recipe's own versioned dict (quantize/recipe.py); what readers need of it:
    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.recipe.get("thresholds", {}))

    @property
    def dtype(self) -> str:
        return self.recipe.get("dtype", "fp32")

    @property
    def linear_scheme(self) -> str:
        return self.recipe["linear"]["scheme"]

    def to_dict(self) -> dict:
        runtime = dataclasses.asdict(self.runtime)
        runtime.update(runtime.pop("extras"))
        if runtime["attention_sink"] is None:  # bundles without one are written as before
            del runtime["attention_sink"]
        data = {
            "format": BUNDLE_FORMAT,
            "schema_version": self.schema_version,
            "created": self.created,
            "tool": {"name": self.tool.name, "version": self.tool.version, "libraries": self.tool.libraries},
            "model": dataclasses.asdict(self.model),
            "recipe": self.recipe,
            "target": dataclasses.asdict(self.target),
            "runtime": _ordered(runtime, RUNTIME_ORDER),
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "special_tokens": {"bos_id": self.special_tokens.bos_id, "eos_ids": list(self.special_tokens.eos_ids),
                               "names": dict(self.special_tokens.names)},
            # The multi-turn parts are optional: a template without them is written as before.
            "prompt_template": {k: v for k, v in dataclasses.asdict(self.prompt_template).items() if v is not None},
            "export": self.export,
            "parity": self.parity,
            **({"guard": self.guard} if self.guard is not None else {}),
            **({"device": self.device} if self.device is not None else {}),
            **({"adapters": self.adapters} if self.adapters is not None else {}),
            **({"variants": self.variants} if self.variants is not None else {}),
            "files": {name: dataclasses.asdict(entry) for name, entry in self.files.items()},
        }
        if self.created is None:
            del data["created"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        """A dict that passed ``schema_problems`` without a problem."""
        tool = data["tool"]
        specials = data["special_tokens"]
        return cls(
            tool=Tool(version=tool["version"], libraries=dict(tool["libraries"]), name=tool["name"]),
            model=_build(ModelInfo, data["model"]),
            recipe=data["recipe"],
            target=_build(TargetInfo, data["target"]),
            runtime=_runtime(data["runtime"]),
            tokenizer=_build(TokenizerInfo, data["tokenizer"]),
            special_tokens=SpecialTokens(bos_id=specials["bos_id"], eos_ids=tuple(specials["eos_ids"]),
                                         names=dict(specials.get("names", {}))),
            prompt_template=_build(ChatTemplate, data["prompt_template"]),
            files={name: FileEntry(size=e["size"], sha256=e["sha256"]) for name, e in data["files"].items()},
            export=data.get("export", {}),
            parity=data.get("parity"),
            guard=data.get("guard"),
            device=data.get("device"),
            adapters=data.get("adapters"),
            variants=data.get("variants"),
            created=data.get("created"),
            schema_version=data["schema_version"],
        )


# The order in which runtime keys have always been written (readers of the JSON do not depend on it).
RUNTIME_ORDER = ("program", "weights", "context_length", "max_seq_len", "metadata", "delegated_calls",
                 "tokens_per_call", "coreml", "ops_outside_delegates", "ops_in_delegates", "delegated_share")


def _ordered(data: dict, order: tuple[str, ...]) -> dict:
    return {**{key: data[key] for key in order if key in data}, **{k: v for k, v in data.items() if k not in order}}


def _runtime(data: dict) -> RuntimeInfo:
    """Object-valued keys the runtime section does not name are a backend's records."""
    names = {f.name for f in dataclasses.fields(RuntimeInfo)}
    extras = {key: value for key, value in data.items() if key not in names and isinstance(value, dict)}
    sink = data.get("attention_sink")
    return dataclasses.replace(_build(RuntimeInfo, data), extras=extras,
                               attention_sink=_build(AttentionSink, sink) if sink is not None else None)


def _build(kind, data: dict):
    """A dataclass from a schema-checked dict; keys this version does not know are left out."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{key: value for key, value in data.items() if key in names})


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def schema_problems(manifest: dict) -> list[str]:
    import jsonschema  # deferred: --help stays instant

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))]


def read_manifest(bundle: Path) -> Manifest:
    """The manifest of a bundle folder, checked against its schema (files are not hashed here)."""
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BundleError("bundle folder not found", path=bundle, fix="pass the folder `llama-mobile export` wrote")
    if not path.is_file():
        raise BundleError("manifest.json missing", path=bundle, fix="re-export the bundle")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise BundleError(f"manifest is not valid JSON ({type(exc).__name__})", path=path,
                          fix="re-export the bundle") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError("not a llama-mobile manifest", path=path, fix="re-export the bundle")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"manifest schema version {version!r} is not supported "
                          f"(this tool reads {list(SUPPORTED_SCHEMA_VERSIONS)})", path=path,
                          fix="use the llama-mobile version that wrote it, or re-export")
    problems = schema_problems(data)
    if problems:
        raise BundleError(f"manifest does not match schema {version}: {problems[0]}", path=path,
                          fix="re-export the bundle; do not edit manifest.json by hand")
    return Manifest.from_dict(data)
