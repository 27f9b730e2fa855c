"""The export job: check -> load -> build (reference + quantize) -> lower -> bundle (with the parity gate).

One method per stage; typed data passes between them. Backend differences are the backend's (export/backends/).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import bundle_folder, check_writable, staged_directory
from llama_mobile.core.devices import get_device
from llama_mobile.core.errors import ConfigError, ParityFailure, UsageError
from llama_mobile.core.manifest import (
    AttentionSink,
    Manifest,
    ModelInfo,
    RuntimeInfo,
    TargetInfo,
    TokenizerInfo,
    Tool,
)
from llama_mobile.core.memory import peak_rss_bytes
from llama_mobile.core.presets import GENERIC_MODEL, ModelPreset, get_model_preset
from llama_mobile.core.progress import Progress
from llama_mobile.core.targets import TARGETS, Target, get_target
from llama_mobile.core.tokenizer import Tokenizer, check_vocab, tokenizer_kind
from llama_mobile.export.backends import bind_device, get_backend
from llama_mobile.export.backends.base import Backend, Extras
from llama_mobile.export.bundle import (
    PARITY_NAME,
    PROGRAM_NAME,
    WEIGHTS_NAME,
    bundle_name,
    write_json,
    write_manifest,
    write_payload,
)
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.config_fields import read_user_text
from llama_mobile.export.loaded import LoadedModel
from llama_mobile.export.lower import LoweredProgram, lower, runner_metadata
from llama_mobile.export.model import TORCH_DTYPES, build_model, load_custom_ops, skeleton
from llama_mobile.export.prequantized import describe as describe_quantization
from llama_mobile.export.rotation import Rotation, hadamard_sizes_supported
from llama_mobile.export.stream_build import fill_streaming
from llama_mobile.jobs.base import Job
from llama_mobile.jobs.plan import Plan, plan
from llama_mobile.jobs.preflight import check_export_fits
from llama_mobile.quantize.apply import PartQuantizer
from llama_mobile.quantize.calibrate import Calibrator, calibration_windows, text_sha256
from llama_mobile.quantize.prequantized import (
    AS_PUBLISHED,
    PrequantizedQuantizer,
    as_published_recipe,
    placeholder_recipe,
    schemes_of,
)
from llama_mobile.quantize.pt2e import quantize_for_target
from llama_mobile.quantize.recipe import Recipe, check_recipe_fits, load_recipe
from llama_mobile.runtime_harness.guard_prompt import guard_template_for_manifest
from llama_mobile.runtime_harness.measure import keeps_eager_model, measure_parity
from llama_mobile.runtime_harness.parity import CORPUS_DIR, eval_token_ids, gate, reference_logits

log = logging.getLogger(__name__)

STAGES = ("check", "load", "build", "lower", "bundle")


@dataclass
class ExportRequest:
    model: str
    checkpoint: Path | None
    recipe: str
    target: str
    output_dir: Path
    context: int | None = None
    validate: bool = True
    positions: int = 128
    name: str | None = None
    task: str | None = None  # "guard" marks a generic Llama checkpoint as a Llama Guard classifier
    device: str | None = None  # a device preset: its RAM decides whether the context fits
    memory_check: bool = True
    formats: tuple[str, ...] = ()  # extra artifacts: "mlpackage" (Core ML targets) writes model.mlpackage
    # Keep every weight inside model.pte (no model.ptd): ExecuTorch's iOS TextLLMRunner takes no data
    # file. A tied embedding/output matrix is then stored twice. Apple --device presets imply it.
    single_file: bool = False
    # Calibration text for a recipe with [calibration] (default: runtime_harness/corpus/calibration.txt).
    calibration: Path | None = None
    # A checkpoint whose weights come quantized (GGUF Q4_0/Q8_0) keeps them as they are unless this is set:
    # then they are dequantized and the recipe quantizes them again (two roundings).
    requantize: bool = False
    # Whether `recipe` was asked for (False: the CLI's default). An asked-for recipe other than
    # "as-published" on a checkpoint whose quantization is kept is refused (it would requantize).
    recipe_explicit: bool = True
    kv_cache: str | None = None  # "fp32" or "int8" instead of the recipe's kv_cache
    # (sink_size, window): a ring KV cache with attention sinks (export/model.py CachePositionsWithSink) of
    # sink + 2 x window positions, which the program runs past; the context is then that cache.
    attention_sink: tuple[int, int] | None = None

    @property
    def sink(self) -> AttentionSink | None:
        return AttentionSink(*self.attention_sink) if self.attention_sink is not None else None


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    parity: dict | None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0

    @property
    def size_bytes(self) -> int:
        return self.manifest.size_bytes


def check_request(request: ExportRequest):
    """Everything that can be judged before a single weight is read."""

    preset = None if request.model == GENERIC_MODEL else get_model_preset(request.model)
    if preset is None and request.checkpoint is None:
        raise UsageError("--model llama needs --checkpoint", fix="pass --checkpoint PATH")
    recipe = with_kv_cache(placeholder_recipe() if request.recipe == AS_PUBLISHED else load_recipe(request.recipe),
                           request)
    target = get_target(request.target)

    target = bind_device(target, request.device)  # an NPU target takes its SoC from the device preset
    if target.backend not in recipe.targets:
        raise UsageError(f"recipe {recipe.name!r} is for {', '.join(recipe.targets)}, not {target.backend}",
                         fix="pick a recipe listed for this target (`llama-mobile recipes`)")
    backend = get_backend(target)
    if backend.quantizes_whole_graph and recipe.pt2e is None:
        raise UsageError(f"target {target.name} runs graphs quantized by its own quantizer; recipe "
                         f"{recipe.name!r} has no [pt2e] section", fix="use a [pt2e] recipe such as "
                         f"{target.backend}-16a4w (`llama-mobile recipes`)")
    unsupported = sorted({q.scheme for q in (recipe.linear, recipe.output, *(o.quant for o in recipe.overrides))}
                         - set(target.linear_schemes))
    if recipe.embedding.scheme not in target.embedding_schemes:
        unsupported.append(f"embedding {recipe.embedding.scheme}")
    if unsupported:
        raise UsageError(f"target {target.name} cannot run {', '.join(unsupported)} as delegated kernels",
                         fix=f"use schemes {', '.join(target.linear_schemes)} for {target.name}"
                             + _other_targets_hint(recipe, target))
    if recipe.kv_cache == "int8" and backend.model_options.get("attention_kernel", "custom") != "custom":
        raise UsageError(f"target {target.name} runs standard attention ops; an int8 KV cache needs ExecuTorch's "
                         "custom quantized SDPA", fix="use --target xnnpack, or drop kv_cache = \"int8\"")
    if request.attention_sink is not None:
        check_attention_sink(request, recipe, target, backend)
    if recipe.kv_cache == "int8" and recipe.dtype != "fp32":
        raise UsageError(f"an int8 KV cache is attended in float32; recipe {recipe.name!r} computes in {recipe.dtype}",
                         fix="use an fp32 recipe with --kv-cache int8")
    dtypes = target.options.dtypes
    if recipe.dtype not in dtypes:
        raise UsageError(f"target {target.name} computes in {'/'.join(dtypes)}, recipe {recipe.name!r} in "
                         f"{recipe.dtype}", fix=f"use a recipe with dtype = {dtypes[0]!r} (`llama-mobile recipes`)")
    for extra in request.formats:
        if extra not in backend.formats:
            able = [t.name for t in TARGETS.values() if extra in get_backend(t).formats]
            raise UsageError(f"--format {extra} needs a target that writes it, not {target.name}",
                             fix=f"add --target {able[0] if able else 'xnnpack'} (`llama-mobile targets`)")
    if preset is not None:
        check_recipe_fits(recipe, linear_widths(preset.architecture), preset.architecture.dim)

    if request.calibration is not None:
        if recipe.calibration is None:
            raise UsageError(f"--calibration needs a recipe with a [calibration] section; {recipe.name!r} has none",
                             fix="use --recipe 8da4w-mixed-gptq (or add [calibration] to the recipe)")
        read_user_text(request.calibration, what="calibration text")  # unreadable: stop before loading
    backend.check_environment(target)  # a missing SDK stops here, before any weight is read
    check_writable(request.output_dir)
    if request.name is not None:  # now, not after the lowering; a default name is known once loaded
        bundle_folder(request.output_dir, request.name, {"checkpoint": request.checkpoint})
    return preset, recipe, target


def check_attention_sink(request: ExportRequest, recipe: Recipe, target: Target, backend: Backend) -> None:
    sink = request.sink
    problems = sink.problems()
    if problems:
        raise UsageError(f"--attention-sink {sink.sink_size},{sink.window_size}: {problems[0]}",
                         fix=f"give SINK,WINDOW with SINK >= 1 and WINDOW >= {AttentionSink.MIN_WINDOW}, e.g. 4,508")
    if backend.model_options.get("attention_kernel", "custom") != "custom":
        raise UsageError(f"target {target.name} runs standard attention ops; an attention sink needs ExecuTorch's "
                         "custom SDPA with a mask", fix="use --target xnnpack")
    if recipe.kv_cache == "int8" or recipe.dtype != "fp32":
        raise UsageError(f"an attention sink needs a float32 KV cache and graph; recipe {recipe.name!r} has "
                         f"{recipe.kv_cache} cache, {recipe.dtype}", fix="drop --kv-cache int8, or use an fp32 recipe")
    if request.context is not None and request.context != sink.cache_size:
        raise UsageError(f"--context {request.context} and --attention-sink {sink.sink_size},{sink.window_size} "
                         f"disagree: the sink's cache is {sink.cache_size} positions (sink + 2 x window)",
                         fix="drop --context")


def with_kv_cache(recipe: Recipe, request: ExportRequest) -> Recipe:
    """The recipe with ``export --kv-cache`` applied (the manifest then records what the program has)."""
    return recipe if request.kv_cache is None else dataclasses.replace(recipe, kv_cache=request.kv_cache)


def _other_targets_hint(recipe, target) -> str:
    """Name the targets of the same backend that can run the recipe (e.g. int4 on iOS 18, not 17)."""

    schemes = {q.scheme for q in (recipe.linear, recipe.output, *(o.quant for o in recipe.overrides))}
    able = [t.name for t in TARGETS.values() if t.backend == target.backend and t is not target
            and schemes <= set(t.linear_schemes) and recipe.embedding.scheme in t.embedding_schemes]
    return f", or use --target {able[0]}" if able else ""


def device_plan(request: ExportRequest, arch: Architecture, recipe: Recipe, context: int) -> Plan | None:
    """With --device: the context the device's RAM holds (shrunk or refused with the reason)."""
    if not request.device:
        return None

    return plan(arch, recipe, context=context, device=get_device(request.device))


def linear_widths(arch) -> dict[str, int]:
    return {name: in_features for name, (_, in_features) in arch.linear_shapes().items()}


@dataclass
class Checked:
    preset: ModelPreset | None
    recipe: Recipe
    target: Target
    backend: Backend


@dataclass
class Loaded:
    model: LoadedModel
    tokenizer: Tokenizer
    context: int
    fitted: Plan | None

    @property
    def arch(self) -> Architecture:
        return self.model.architecture


@dataclass
class Built:
    model: torch.nn.Module
    token_ids: list[int]
    reference: torch.Tensor | None  # fp32 eager logits on token_ids, for the gate
    torchao_configs: dict
    pt2e_record: dict
    calibration_record: dict = field(default_factory=dict)


class ExportJob(Job):
    STAGES = STAGES

    def run(self) -> ExportResult:
        progress = self.progress
        with progress.stage("check"):
            checked = self.check()
        with progress.stage("load", str(self.request.checkpoint or "embedded weights")):
            loaded = self.load(checked)
        load_custom_ops()
        recipe = checked.recipe
        with progress.stage("build", f"{recipe.name}, a block at a time" if recipe.pt2e is None else recipe.name):
            built = self.build(checked, loaded)
        with progress.stage("lower", checked.target.name):
            lowered = self.lower(checked, loaded, built)
        kv = "-kv8" if recipe.kv_cache == "int8" else ""
        sink = self.request.sink
        kv += f"-sink{sink.sink_size}w{sink.window_size}" if sink else ""
        name = self.request.name or bundle_name(loaded.model.preset, recipe.name + kv, checked.target.name)
        final = bundle_folder(self.request.output_dir, name, {"checkpoint": self.request.checkpoint})
        with progress.stage("bundle", str(final)):
            manifest = self.bundle(checked, loaded, built, lowered, final)
        return ExportResult(bundle=final, manifest=manifest, parity=manifest.parity, seconds=dict(progress.seconds),
                            peak_rss_bytes=peak_rss_bytes())

    def check(self) -> Checked:
        """Everything that can be judged before a single weight is read."""
        request = self.request
        preset, recipe, target = check_request(request)
        if request.memory_check and preset is not None:
            self._preflight(preset.architecture, recipe, _asked_context(request, preset.default_context))
        return Checked(preset, recipe, target, get_backend(target))

    def _preflight(self, arch: Architecture, recipe: Recipe, context: int) -> None:
        estimate = check_export_fits(arch, recipe, context)
        self.progress.note(f"memory preflight: about {estimate / 2**30:.1f} GiB needed")

    def load(self, checked: Checked) -> Loaded:
        request, preset, recipe = self.request, checked.preset, checked.recipe
        priced = request.memory_check and preset is None  # a generic checkpoint: priced from its config, before its weights
        model = load_checkpoint(request.model, request.checkpoint, preflight=(lambda arch: self._preflight(
            arch, recipe, _asked_context(request, 1024))) if priced else None)
        if request.task:
            model.task = request.task
        checked.recipe = recipe = with_kv_cache(self._kept_quantization(checked, model), request)
        arch = model.architecture
        check_recipe_fits(recipe, linear_widths(arch), arch.dim)
        tokenizer = Tokenizer(model.tokenizer_path)
        check_vocab(tokenizer, arch.vocab_size)
        context = _asked_context(request, preset.default_context if preset else 1024)
        if request.sink is not None and context > arch.max_position:
            raise UsageError(f"--attention-sink's cache of {context} positions is past the model's {arch.max_position}",
                             fix="choose a smaller window")
        if not 2 <= context <= arch.max_position:
            raise UsageError(f"--context {context} is outside 2..{arch.max_position}", fix="choose a smaller --context")
        fitted = device_plan(request, arch, recipe, context)
        if fitted is not None and request.sink is not None and fitted.context < context:
            raise UsageError(f"{request.device} holds a cache of {fitted.context} positions, not the sink's {context}",
                             fix="choose a smaller window")
        if fitted is not None:
            context = fitted.context
            for note in fitted.notes:
                self.progress.note(note)
        self.progress.note(f"{model.preset}: {arch.n_layers} blocks, dim {arch.dim}, "
                           f"{arch.param_count() / 1e6:.0f}M parameters, context {context}")
        return Loaded(model, tokenizer, context, fitted)

    def _kept_quantization(self, checked: Checked, model: LoadedModel) -> Recipe:
        """The recipe for a checkpoint whose weights come quantized: "as-published" (its own integers and
        scales) when every matrix maps, else the requested recipe, with what was found said plainly."""
        request, info = self.request, model.quantization
        if not model.prequantized:
            if request.recipe == AS_PUBLISHED:
                found = describe_quantization(info) if info else "float weights"
                raise UsageError(f"--recipe {AS_PUBLISHED} keeps a checkpoint's own quantization; this one has "
                                 f"{found}", fix="pick a recipe (`llama-mobile recipes`)")
            if info:
                self.progress.note(f"{describe_quantization(info)}; requantized by recipe {checked.recipe.name}")
            return checked.recipe
        def requantized(reason: str) -> Recipe:
            self.progress.note(f"{describe_quantization(info)}; {reason}: dequantized and requantized by recipe "
                               f"{checked.recipe.name}")
            info["kept"] = False
            model.prequantized = {}
            return checked.recipe

        requantizable = info.get("requantizable", True)
        if checked.target.backend != "xnnpack":  # the kept schemes are XNNPACK's (8-bit dynamic activations)
            if not requantizable:
                raise UsageError(f"{info['scheme']} weights are published for XNNPACK, not {checked.target.name}",
                                 fix="export with --target xnnpack")
            return requantized(f"target {checked.target.name} cannot hold them as they are")
        if request.requantize:
            if not requantizable:
                raise UsageError(f"{info['scheme']} weights are published quantized and cannot be requantized",
                                 fix=f"drop --requantize (the export keeps them as {AS_PUBLISHED})")
            return requantized("--requantize")
        if request.recipe_explicit and request.recipe != AS_PUBLISHED:
            again = "; add --requantize to apply it anyway" if requantizable else ""
            raise UsageError(f"recipe {request.recipe!r} would requantize this checkpoint's {info.get('scheme') or 'quantized'} "
                             f"weights", fix=f"drop --recipe (or pass --recipe {AS_PUBLISHED}) to keep them{again}")
        recipe = as_published_recipe(schemes_of(model.prequantized, model.architecture.tied_embeddings),
                                     describe_quantization(info))
        self.progress.note(describe_quantization(info) + f" (recipe {AS_PUBLISHED})")
        return recipe

    def build(self, checked: Checked, loaded: Loaded) -> Built:
        request, recipe, arch = self.request, checked.recipe, loaded.arch
        options = dict(checked.backend.model_options)
        if recipe.dtype == "fp16":  # x^2 of the residual stream's outliers overflows fp16 (SmolLM2: |x|~25000)
            options["rms_norm"] = "l2"
        gated = loaded.context if request.sink is None else request.sink.exact_positions  # full attention there
        token_ids = eval_token_ids(loaded.tokenizer, min(request.positions, gated),
                                   bos_id=loaded.model.specials.bos_id)
        if recipe.pt2e is not None:  # the backend's quantizer, calibrated on the evaluation tokens
            model = build_model(arch, loaded.context, loaded.model.state_dict, **options)
            loaded.model.state_dict = {}  # the model owns the tensors now; nothing holds a second reference
            reference = reference_logits(model, token_ids) if request.validate else None
            model, pt2e_record = quantize_for_target(model, recipe, checked.target, token_ids,
                                                     min(loaded.context, 256))
            torchao_configs = {}
        else:  # float weights of one block at a time: the peak is the quantized model plus one block
            rotation = rotation_for(recipe, arch)  # rotates each part's float weights before it is calibrated/quantized
            model = skeleton(arch, loaded.context, **options,
                             output_mix=rotation is not None and rotation.mixes_output(arch.tied_embeddings))
            calibrator = Calibrator.create(recipe.calibration) if recipe.calibration else None
            calibration_ids, calibration_record = self._calibration_tokens(recipe, loaded)
            quantizer = PrequantizedQuantizer(model, loaded.model.prequantized, tied=arch.tied_embeddings) \
                if loaded.model.prequantized else PartQuantizer(model, recipe, tied=arch.tied_embeddings,
                                                                calibrator=calibrator)
            reference = fill_streaming(model, loaded.model.state_dict, quantize_part=quantizer.quantize,
                                       calibration_ids=calibration_ids, observe=quantizer.observe,
                                       token_ids=token_ids if request.validate else None,
                                       on_part=lambda part: self.progress.note(
                                           f"{part} done{_calibrated_note(quantizer, part)} "
                                           f"(peak RSS {peak_rss_bytes() / 2**30:.2f} GiB)"),
                                       rotation=rotation)
            loaded.model.state_dict = loaded.model.prequantized = {}
            torchao_configs, pt2e_record = quantizer.finish(), {}
            if calibrator is not None:
                calibration_record["calibrated_layers"] = len(quantizer.calibrated)
        if checked.backend.casts_model_dtype and recipe.dtype != "fp32":
            model = model.to(TORCH_DTYPES[recipe.dtype])
        if recipe.kv_cache == "int8":  # after the float reference: parity then includes what it costs
            model.use_int8_kv_cache()
        if request.sink is not None:  # likewise; over the gate's positions it is full attention
            model.use_attention_sink(request.sink.sink_size, request.sink.window_size)
        return Built(model, token_ids, reference, torchao_configs, pt2e_record,
                     calibration_record if recipe.pt2e is None else {})

    def _calibration_tokens(self, recipe: Recipe, loaded: Loaded) -> tuple[list[list[int]] | None, dict]:
        """The calibration sequences and what the manifest records of them (text, SHA-256, tokens)."""
        request, calibration = self.request, recipe.calibration
        if calibration is None:
            return None, {}
        path = request.calibration or CALIBRATION_TEXT
        text = read_user_text(path, what="calibration text")
        ids = loaded.tokenizer.encode(text)
        bos = loaded.model.specials.bos_id
        sequences = calibration_windows(ids, calibration, loaded.context, bos)
        used = sum(len(s) for s in sequences)
        if used < calibration.tokens:
            raise UsageError(f"the calibration text gives {len(ids)} tokens; recipe {recipe.name!r} asks for "
                             f"{calibration.tokens}", path=path, fix="pass a longer --calibration text")
        self.progress.note(f"calibration: {calibration.method}, {len(sequences)} sequences x "
                           f"{len(sequences[0])} tokens of {path.name}")
        return sequences, {"text": path.name if request.calibration is None else str(path),
                           "text_sha256": text_sha256(text), "text_tokens": len(ids), "tokens_used": used}

    def lower(self, checked: Checked, loaded: Loaded, built: Built) -> LoweredProgram:
        request, arch, target = self.request, loaded.arch, checked.target
        max_seq_len = min(loaded.context, 256, *((request.sink.window_size,) if request.sink else ()))
        metadata = runner_metadata(bos_id=loaded.model.specials.bos_id, eos_ids=loaded.model.specials.eos_ids,
                                   context_len=loaded.context, max_seq_len=max_seq_len,
                                   vocab_size=arch.vocab_size, n_layers=arch.n_layers)
        metadata.update(checked.backend.runner_metadata)
        # A tied embedding/output pair is stored once only through ExecuTorch's external weights file.
        apple = request.device is not None and get_device(request.device).vendor == "Apple"
        external_weights = (checked.backend.external_weights and arch.tied_embeddings
                            and not (request.single_file or apple))
        lowered = lower(built.model, target, metadata, max_seq_len, external_weights=external_weights)
        if not (request.validate and keeps_eager_model(checked.backend.parity_method(target))):
            built.model = None  # the program holds the weights now
        self.progress.note(f"{lowered.delegated_calls} delegated calls; outside delegates: "
                           + (", ".join(f"{k}x{v}" for k, v in sorted(lowered.portable_ops.items())) or "none"))
        return lowered

    def bundle(self, checked: Checked, loaded: Loaded, built: Built, lowered: LoweredProgram,
               final: Path) -> Manifest:
        request, recipe, target = self.request, checked.recipe, checked.target
        with staged_directory(final) as staging:
            tokenizer_file = write_payload(staging, lowered.pte, loaded.model.tokenizer_path, lowered.weights)
            quantized = sum(not recipe.quant_for(name).is_float for name in linear_widths(loaded.arch))
            extras = checked.backend.write_extras(staging, lowered, target, recipe, loaded.arch, quantized,
                                                  keep=request.formats)
            if extras is not None and "summary" in extras.record:
                self.progress.note(extras.record["summary"])
            parity = self._gate(checked, built, lowered, staging, extras) if request.validate else None
            if extras is not None and extras.temporary is not None:  # extracted for the checks only
                shutil.rmtree(extras.temporary)
            manifest = write_manifest(staging, self._manifest(checked, loaded, built, lowered, tokenizer_file,
                                                              extras, parity))
            if parity is not None and not parity["passed"]:
                rejected = final.with_name(final.name + ".rejected")
                shutil.rmtree(rejected, ignore_errors=True)
                shutil.copytree(staging, rejected)
                raise ParityFailure("; ".join(parity["failures"]), path=rejected,
                                    fix="the artifact is kept there for inspection; use a milder recipe, "
                                        "or --no-validate to skip the gate")
        return manifest

    def _gate(self, checked: Checked, built: Built, lowered: LoweredProgram, staging: Path,
              extras: Extras | None) -> dict:
        method = checked.backend.parity_method(checked.target)
        metrics = measure_parity(method, program=staging / PROGRAM_NAME,
                                 weights=staging / WEIGHTS_NAME if lowered.weights else None,
                                 gate_input=extras.gate_input if extras else None, eager_model=built.model,
                                 token_ids=built.token_ids, reference=built.reference,
                                 dtype=checked.recipe.dtype, target=checked.target)
        result = gate(metrics, dataclasses.asdict(checked.recipe.thresholds))
        shown = method if method != "program" else None
        parity = {**result.to_dict(), **({"method": shown} if shown else {})}
        self.progress.note(result.summary() + (f" [{shown}]" if shown else ""))
        write_json(staging / PARITY_NAME, parity)
        return parity

    def _manifest(self, checked: Checked, loaded: Loaded, built: Built, lowered: LoweredProgram,
                  tokenizer_file: Path, extras: Extras | None, parity: dict | None) -> Manifest:
        request, recipe, target, model, arch = self.request, checked.recipe, checked.target, loaded.model, loaded.arch
        metadata = lowered.metadata
        max_seq_len = metadata["get_max_seq_len"]
        outside = sum(lowered.portable_ops.values())
        return Manifest(
            tool=Tool(version="", libraries={}),  # filled in by write_manifest
            model=ModelInfo(preset=model.preset, task=model.task, architecture=arch.to_dict(),
                            source={"format": model.source_format,
                                    "files": [dataclasses.asdict(s) for s in model.sources],
                                    **({"quantization": model.quantization} if model.quantization else {})},
                            history=model.history),
            recipe={**recipe.to_dict(), "torchao_configs": built.torchao_configs,
                    **({"pt2e_quantizer": built.pt2e_record} if built.pt2e_record else {}),
                    **({"calibration": {**recipe.to_dict()["calibration"], **built.calibration_record}}
                       if built.calibration_record else {})},
            target=TargetInfo(name=target.name, backend=target.backend, min_os=target.min_os,
                              options=target.options.to_dict()),
            runtime=RuntimeInfo(
                program=PROGRAM_NAME, weights=WEIGHTS_NAME if lowered.weights else None,
                context_length=loaded.context, max_seq_len=max_seq_len, metadata=metadata,
                delegated_calls=lowered.delegated_calls,
                tokens_per_call={"min": 1, "max": max_seq_len if metadata["enable_dynamic_shape"] else 1},
                extras={extras.key: extras.record} if extras is not None else {},
                ops_outside_delegates=lowered.portable_ops, ops_in_delegates=lowered.delegated_ops,
                delegated_share=round(lowered.delegated_ops / max(1, lowered.delegated_ops + outside), 4),
                attention_sink=request.sink),
            tokenizer=TokenizerInfo(file=tokenizer_file.name, kind=tokenizer_kind(tokenizer_file)),
            special_tokens=model.specials,
            prompt_template=model.chat_template,
            export={"seconds": {**self.progress.seconds, **{f"lower.{k}": round(v, 2)
                                                            for k, v in lowered.seconds.items()}},
                    "peak_rss_bytes": peak_rss_bytes()},
            parity=parity,
            guard=guard_template_for_manifest() if model.task == "guard" else None,
            device={**get_device(request.device).to_dict(), "plan": loaded.fitted.to_dict()}
            if request.device else None,
        )


def _asked_context(request: ExportRequest, default: int) -> int:
    """--context (0 included: it is refused, not replaced), or the attention sink's cache (sink + 2 x window),
    which is the program's context; else ``default``."""
    asked = request.sink.cache_size if request.sink is not None else request.context
    return default if asked is None else asked


def rotation_for(recipe: Recipe, arch: Architecture) -> Rotation | None:
    """The recipe's [rotation] for this architecture (None without one)."""
    spec = recipe.rotation
    if spec is None:
        return None
    missing = hadamard_sizes_supported(arch)
    if missing:
        raise ConfigError(f"[rotation] has no Hadamard matrix for {', '.join(missing)}", path=recipe.name,
                          fix="use a recipe without [rotation] for this model")
    return Rotation.hadamard(arch, seed=spec.seed, r1=spec.r1, r2=spec.r2)


CALIBRATION_TEXT = CORPUS_DIR / "calibration.txt"  # public domain; never the parity text (alice.txt)


def _calibrated_note(quantizer: PartQuantizer, part: str) -> str:
    if quantizer.calibrator is None:
        return ""
    done = sum(name.startswith(part + ".") for name in quantizer.calibrated)
    return f", {done} linears calibrated ({quantizer.calibrator.calibration.method})" if done else ""


def run_export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    return ExportJob(request, progress).run()
