"""Quantization recipes: small versioned TOML files, parsed into frozen dataclasses.

A recipe is checked as a whole (every problem reported at once) before any weights load.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.core.schemes import (
    EMBEDDING_SCHEMES,
    FLOAT_SCHEMES,
    LINEAR_SCHEMES,
    PT2E_SCHEMES,
    Activations,
    Scheme,
)
from llama_mobile.quantize.patterns import PatternError, SafePattern, compile_pattern

RECIPE_SCHEMA_VERSION = 1
RECIPE_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "8da4w-mixed-gptq"  # what `export` uses when neither --recipe nor a device names one

ALGORITHMS = ("affine", "hqq")
# Whole-graph PT2E quantization by an NPU backend's own quantizer: static activations calibrated on
# sample tokens, weights per output channel (or, QNN only, in blocks along the input: LPBQ).
PT2E_QUANTIZERS = ("qnn", "neuropilot")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class LayerQuant:
    scheme: str
    group_size: int = 0  # 0: one scale per output channel
    symmetric: bool = True
    algorithm: str = "affine"

    @property
    def is_float(self) -> bool:
        return self.scheme in FLOAT_SCHEMES

    @property
    def weight_bits(self) -> int:
        return Scheme(self.scheme).weight_bits

    @property
    def dynamic_activations(self) -> bool:
        return Scheme(self.scheme).activations is Activations.DYNAMIC


@dataclass(frozen=True)
class Pt2eQuant:
    quantizer: str  # the backend whose quantizer annotates the graph: "qnn" or "neuropilot"
    scheme: str  # activation bits "a" weight bits "w", e.g. "16a4w"
    block_size: int = 0  # 0: one scale per output channel; n: QNN's LPBQ, blocks of n input columns

    @property
    def activation_bits(self) -> int:
        return Scheme(self.scheme).activation_bits

    @property
    def weight_bits(self) -> int:
        return Scheme(self.scheme).weight_bits


CALIBRATION_METHODS = ("gptq", "imatrix")


@dataclass(frozen=True)
class Calibration:
    """[calibration]: choose the int4 values and group scales from calibration text (quantize/calibrate.py)."""

    method: str = "gptq"  # "gptq" (error feedback through the inverse Hessian) or "imatrix" (weighted scales)
    tokens: int = 512  # calibration tokens, taken from the text as sequences of `sequence`
    sequence: int = 256  # tokens per sequence (each starts with BOS; capped at the context)
    seed: int = 0  # which windows of the text
    damp: float = 0.1  # GPTQ's damping, a fraction of the mean Hessian diagonal


ROTATION_KINDS = ("hadamard",)
# The dim x dim linear a rotated model with tied embeddings gets after its final norm (export/rotation.py);
# it is quantized as the output layer.
OUTPUT_MIX = "output_mix"


@dataclass(frozen=True)
class Rotation:
    """Function-preserving rotations of the float weights before quantization (QuaRot / SpinQuant R1, R2):
    ``r1`` rotates the residual stream (RMSNorm scales folded into the linears), ``r2`` every value head.
    ``online_down_proj`` (R4, an online Hadamard before w2) is not implemented yet."""

    kind: str = "hadamard"  # randomized Hadamard matrices from a seeded generator
    seed: int = 0
    r1: bool = True
    r2: bool = True
    online_down_proj: bool = False


@dataclass(frozen=True)
class Override:
    pattern: str  # full match against a module's name (e.g. "layers\.(0|15)\..*"); syntax: quantize/patterns.py
    quant: LayerQuant


@dataclass(frozen=True)
class Thresholds:
    """What the recipe promises against the float reference; the parity gate enforces it."""

    min_top1: float = 0.5
    min_cosine: float = 0.9
    max_ppl_ratio: float = 1.5
    max_kl_mean: float = 0.5
    min_verdict_agreement: float = 0.9  # Guard bundles: share of prompts whose verdict matches the reference


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    dtype: str
    linear: LayerQuant
    embedding: LayerQuant
    output: LayerQuant
    overrides: tuple[Override, ...] = ()
    targets: tuple[str, ...] = ("xnnpack",)
    thresholds: Thresholds = field(default_factory=Thresholds)
    version: int = RECIPE_SCHEMA_VERSION
    pt2e: Pt2eQuant | None = None  # set: the backend's PT2E quantizer does all quantization, not torchao
    calibration: Calibration | None = None  # set: calibrated int4 weights (`export --calibration FILE`)
    rotation: Rotation | None = None  # set: the float weights are rotated before they are quantized
    kv_cache: str = "fp32"  # "int8": ExecuTorch's quantized KV cache and SDPA (export/model.py)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.kv_cache == "fp32":  # recipes without it keep the manifest they always had
            del data["kv_cache"]
        if self.calibration is None:  # recipes without it keep the manifest they always had
            del data["calibration"]
        if self.rotation is None:
            del data["rotation"]
        return data

    def shares_tied_weights(self) -> bool:
        """Whether a tied embedding and output layer can be stored once under this recipe.

        Both must hold the same bytes: both float, or both int8 per channel (one tensor serves the
        embedding lookup and the output matmul; dynamic activation quantization does not change the weight).
        """
        embedding, output = self.embedding, self.output
        if embedding.is_float or output.is_float:
            return embedding.scheme == output.scheme == Scheme.FP32
        return (embedding.weight_bits == output.weight_bits == 8 and not embedding.group_size
                and not output.group_size and embedding.symmetric == output.symmetric)

    def quant_for(self, module_name: str) -> LayerQuant:
        """The scheme a linear layer gets: first matching override, then output, then linear."""
        for override in self.overrides:
            if _compiled(override.pattern).fullmatch(module_name):
                return override.quant
        return self.output if module_name in ("output", OUTPUT_MIX) else self.linear


MAX_RECIPE_BYTES = 1 << 20


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> SafePattern:
    return compile_pattern(pattern)


_TOP_KEYS = {"name", "summary", "version", "dtype", "targets", "linear", "embedding", "output",
             "overrides", "thresholds", "pt2e", "calibration", "rotation", "kv_cache"}
KV_CACHES = ("fp32", "int8")
_ROTATION_KEYS = {"kind", "seed", "r1", "r2", "online_down_proj"}
_PT2E_KEYS = {"quantizer", "scheme", "block_size"}
_LAYER_KEYS = {"scheme", "group_size", "symmetric", "algorithm"}


def _layer(section: object, where: str, schemes: tuple[str, ...], problems: list[str],
           default: LayerQuant | None = None) -> LayerQuant | None:
    if section is None:
        return default
    if not isinstance(section, dict):
        problems.append(f"[{where}] must be a table")
        return default
    for key in sorted(set(section) - _LAYER_KEYS):
        problems.append(f"[{where}] unknown key {key!r}")
    base = default or LayerQuant(scheme=Scheme.FP32.value)
    scheme = section.get("scheme", base.scheme)
    if scheme not in schemes:
        problems.append(f"[{where}] scheme {scheme!r} is not one of {', '.join(schemes)}")
    group = section.get("group_size", base.group_size)
    if not isinstance(group, int) or isinstance(group, bool) or group < 0:
        problems.append(f"[{where}] group_size must be an integer >= 0, got {group!r}")
    elif group and group & (group - 1):
        problems.append(f"[{where}] group_size {group} is not a power of two")
    symmetric = section.get("symmetric", base.symmetric)
    if not isinstance(symmetric, bool):
        problems.append(f"[{where}] symmetric must be true or false")
    algorithm = section.get("algorithm", base.algorithm)
    if algorithm not in ALGORITHMS:
        problems.append(f"[{where}] algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    return LayerQuant(scheme=scheme, group_size=group if isinstance(group, int) else 0,
                      symmetric=bool(symmetric), algorithm=algorithm)


def _pt2e(section: object, data: dict, targets: list, problems: list[str]) -> Pt2eQuant | None:
    """A [pt2e] recipe quantizes the whole graph in the backend's quantizer; torchao sections would
    quantize the same layers a second time, so they must stay float."""
    if section is None:
        return None
    if not isinstance(section, dict):
        problems.append("[pt2e] must be a table")
        return None
    for key in sorted(set(section) - _PT2E_KEYS):
        problems.append(f"[pt2e] unknown key {key!r}")
    quantizer, scheme, block = section.get("quantizer"), section.get("scheme"), section.get("block_size", 0)
    if quantizer not in PT2E_QUANTIZERS:
        problems.append(f"[pt2e] quantizer {quantizer!r} is not one of {', '.join(PT2E_QUANTIZERS)}")
    elif targets != [quantizer]:
        problems.append(f"[pt2e] quantizer {quantizer!r} needs targets = [{quantizer!r}]")
    if scheme not in PT2E_SCHEMES:
        problems.append(f"[pt2e] scheme {scheme!r} is not one of {', '.join(PT2E_SCHEMES)}")
    if not isinstance(block, int) or isinstance(block, bool) or block < 0 or (block and block & (block - 1)):
        problems.append(f"[pt2e] block_size must be 0 or a power of two, got {block!r}")
        block = 0
    elif block and (quantizer != "qnn" or scheme != Scheme.A16W4):
        problems.append("[pt2e] block_size is QNN's LPBQ: only quantizer 'qnn' with scheme '16a4w'")
    for key in ("linear", "embedding", "output"):
        if isinstance(data.get(key), dict) and data[key].get("scheme", Scheme.FP32) != Scheme.FP32:
            problems.append(f"[{key}] must stay fp32 in a [pt2e] recipe (the {quantizer} quantizer covers it)")
    if data.get("overrides"):
        problems.append("[[overrides]] are not supported in a [pt2e] recipe")
    return Pt2eQuant(quantizer=str(quantizer), scheme=str(scheme), block_size=block)


def _calibration(section: object, linear: LayerQuant, overrides: list[Override], pt2e: object,
                 problems: list[str]) -> Calibration | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        problems.append("[calibration] must be a table")
        return None
    known = {f.name for f in dataclasses.fields(Calibration)}
    for key in sorted(set(section) - known):
        problems.append(f"[calibration] unknown key {key!r}")
    default = Calibration()
    method = section.get("method", default.method)
    if method not in CALIBRATION_METHODS:
        problems.append(f"[calibration] method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    values = {}
    for key, low, high in (("tokens", 16, 65536), ("sequence", 16, 8192), ("seed", 0, 2**31 - 1)):
        value = section.get(key, getattr(default, key))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            problems.append(f"[calibration] {key} must be an integer in {low}..{high}, got {value!r}")
            value = getattr(default, key)
        values[key] = value
    damp = section.get("damp", default.damp)
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not math.isfinite(damp) or not 0 < damp <= 1:
        problems.append(f"[calibration] damp must be a number in (0, 1], got {damp!r}")
        damp = default.damp
    if pt2e is not None:
        problems.append("[calibration] is not supported in a [pt2e] recipe")
    grouped = [q for q in (linear, *(o.quant for o in overrides)) if not q.is_float and q.group_size]
    if not grouped or any(not q.symmetric for q in grouped):
        problems.append("[calibration] needs symmetric grouped linears (group_size > 0, symmetric = true)")
    return Calibration(method=str(method), damp=float(damp), **values)


def _rotation(section: object, data: dict, problems: list[str]) -> Rotation | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        problems.append("[rotation] must be a table")
        return None
    for key in sorted(set(section) - _ROTATION_KEYS):
        problems.append(f"[rotation] unknown key {key!r}")
    default = Rotation()
    kind = section.get("kind", default.kind)
    if kind not in ROTATION_KINDS:
        problems.append(f"[rotation] kind {kind!r} is not one of {', '.join(ROTATION_KINDS)}")
    seed = section.get("seed", default.seed)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        problems.append(f"[rotation] seed must be an integer in 0..2^31-1, got {seed!r}")
        seed = 0
    flags = {}
    for key in ("r1", "r2", "online_down_proj"):
        value = section.get(key, getattr(default, key))
        if not isinstance(value, bool):
            problems.append(f"[rotation] {key} must be true or false")
        flags[key] = bool(value)
    if flags["online_down_proj"]:
        problems.append("[rotation] online_down_proj (an online Hadamard before w2) is not implemented yet")
    if not (flags["r1"] or flags["r2"]):
        problems.append("[rotation] needs r1 or r2 (or no [rotation] section)")
    if data.get("pt2e") is not None:
        problems.append("[rotation] is applied in the block-at-a-time torchao build, not with [pt2e]")
    return Rotation(kind=str(kind), seed=seed, **flags)


def parse_recipe(data: dict, source: str) -> Recipe:
    problems: list[str] = []
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(f"unknown key {key!r}")
    version = data.get("version", RECIPE_SCHEMA_VERSION)
    if version != RECIPE_SCHEMA_VERSION:
        problems.append(f"version {version!r} is not supported (this tool reads {RECIPE_SCHEMA_VERSION})")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", name or ""):
        problems.append("name must be lowercase letters, digits, '.' or '-'")
    dtype = data.get("dtype", "fp32")
    if dtype not in DTYPES:
        problems.append(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    float_layer = LayerQuant(Scheme.FP32.value)
    linear = _layer(data.get("linear"), "linear", LINEAR_SCHEMES, problems) or float_layer
    embedding = _layer(data.get("embedding"), "embedding", EMBEDDING_SCHEMES, problems) or float_layer
    output = _layer(data.get("output"), "output", LINEAR_SCHEMES, problems, default=linear) or linear
    overrides = []
    raw_overrides = data.get("overrides", [])
    if not isinstance(raw_overrides, list):
        problems.append("overrides must be an array of tables ([[overrides]])")
        raw_overrides = []
    for i, item in enumerate(raw_overrides):
        where = f"overrides.{i}"
        if not isinstance(item, dict) or not isinstance(item.get("pattern"), str):
            problems.append(f"[{where}] needs a string 'pattern'")
            continue
        try:  # a restricted syntax matched in linear time: no pattern can hang plan or export
            _compiled(item["pattern"])
        except PatternError as exc:
            problems.append(f"[{where}] pattern {item['pattern'][:40]!r}{'...' if len(item['pattern']) > 40 else ''} "
                            f"is not supported ({exc}; see quantize/patterns.py)")
        quant = _layer({k: v for k, v in item.items() if k != "pattern"}, where, LINEAR_SCHEMES, problems)
        overrides.append(Override(item["pattern"], quant or float_layer))
    targets = data.get("targets", ["xnnpack"])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets) or not targets:
        problems.append("targets must be a non-empty list of target backends")
        targets = ["xnnpack"]
    pt2e = _pt2e(data.get("pt2e"), data, targets, problems)
    calibration = _calibration(data.get("calibration"), linear, overrides, data.get("pt2e"), problems)
    rotation = _rotation(data.get("rotation"), data, problems)
    kv_cache = data.get("kv_cache", "fp32")
    if kv_cache not in KV_CACHES:
        problems.append(f"kv_cache {kv_cache!r} is not one of {', '.join(KV_CACHES)}")
    thresholds = Thresholds()
    raw_thresholds = data.get("thresholds", {})
    if isinstance(raw_thresholds, dict):
        known = {f.name for f in dataclasses.fields(Thresholds)}
        for key in sorted(set(raw_thresholds) - known):
            problems.append(f"[thresholds] unknown key {key!r}")
        values = {k: v for k, v in raw_thresholds.items() if k in known}
        for key, value in values.items():
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or value < 0):
                problems.append(f"[thresholds] {key} must be a non-negative finite number, got {value!r}")
        thresholds = dataclasses.replace(thresholds, **{k: float(v) for k, v in values.items()
                                                        if isinstance(v, (int, float)) and math.isfinite(v)})
    else:
        problems.append("[thresholds] must be a table")
    if problems:
        raise ConfigError(problems, path=source, fix="correct the recipe (see `llama-mobile recipes show fp32`)")
    return Recipe(name=name, summary=str(data.get("summary", "")), dtype=dtype, linear=linear,
                  embedding=embedding, output=output, overrides=tuple(overrides),
                  targets=tuple(targets), thresholds=thresholds, version=version, pt2e=pt2e,
                  calibration=calibration, rotation=rotation, kv_cache=str(kv_cache))


def read_recipe_file(path: Path) -> Recipe:
    path = Path(path)
    if path.is_dir():
        raise UsageError("is a folder, not a recipe file", path=path, fix="pass a recipe .toml file")
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise ConfigError(f"is larger than {MAX_RECIPE_BYTES:,} bytes: not a recipe", path=path,
                              fix="pass a recipe .toml file")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("recipe file not found", path=path, fix="check the path") from None
    except OSError as exc:
        raise UsageError(f"cannot read the recipe file ({exc.strerror or exc})", path=path,
                         fix="check the path and its permissions") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML ({str(exc)[:200]})", path=path, fix="fix the TOML syntax") from None
    except RecursionError:
        raise ConfigError("not valid TOML (nested too deeply)", path=path, fix="fix the TOML syntax") from None
    return parse_recipe(data, str(path))


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.toml"))}


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or any recipe file by path."""
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return read_recipe_file(shipped[name_or_path])
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return read_recipe_file(path)
    raise UsageError(f"unknown recipe {name_or_path!r}", fix=f"use one of: {', '.join(shipped)} or a .toml path")


def check_recipe_fits(recipe: Recipe, linear_in_features: dict[str, int], embedding_dim: int) -> None:
    """Group sizes must divide every layer they apply to: torchao would silently skip such a layer."""
    problems = []
    for module_name, in_features in linear_in_features.items():
        quant = recipe.quant_for(module_name)
        if not quant.is_float and quant.group_size and in_features % quant.group_size:
            problems.append(f"group_size {quant.group_size} does not divide {module_name} "
                            f"(in_features {in_features})")
    block = recipe.pt2e.block_size if recipe.pt2e else 0
    problems += [f"[pt2e] block_size {block} does not divide {name} (in_features {width})"
                 for name, width in linear_in_features.items() if block and width % block]
    emb = recipe.embedding
    if not emb.is_float and emb.group_size and embedding_dim % emb.group_size:
        problems.append(f"embedding group_size {emb.group_size} does not divide dim {embedding_dim}")
    if problems:
        shown = problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise ConfigError(shown, path=recipe.name, fix="choose a group size that divides these widths")
