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
from llama_mobile.core.atomic import bundle_folder, staged_directory
from llama_mobile.core.devices import get_device
from llama_mobile.core.errors import ConfigError, ParityFailure, UsageError
from llama_mobile.core.manifest import (
    Manifest,
    ModelInfo,
    RuntimeInfo,
    TargetInfo,
    TokenizerInfo,
    Tool,
)
from llama_mobile.core.memory import peak_rss_bytes
from llama_mobile.core.presets import ModelPreset
from llama_mobile.core.progress import Progress
from llama_mobile.core.targets import Target
from llama_mobile.core.tokenizer import Tokenizer, check_vocab, tokenizer_kind
from llama_mobile.export.adapters import Adapter
from llama_mobile.export.backends import get_backend
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
from llama_mobile.jobs.adapter_export import (
    AdapterProgram,
    adapter_entries,
    gate_adapters,
    lower_adapters,
    read_adapters,
    with_adapter_failures,
    write_adapter_programs,
)
from llama_mobile.jobs.base import Job
from llama_mobile.jobs.export_request import (
    ExportRequest,
    ExportResult,
    asked_context,
    check_request,
    device_plan,
    linear_widths,
    with_kv_cache,
)
from llama_mobile.jobs.plan import Plan
from llama_mobile.jobs.preflight import check_export_fits
from llama_mobile.quantize.apply import PartQuantizer
from llama_mobile.quantize.calibrate import Calibrator, calibration_windows, text_sha256
from llama_mobile.quantize.prequantized import (
    AS_PUBLISHED,
    PrequantizedQuantizer,
    as_published_recipe,
    schemes_of,
)
from llama_mobile.quantize.pt2e import quantize_for_target
from llama_mobile.quantize.recipe import Recipe, check_recipe_fits
from llama_mobile.runtime_harness.guard_prompt import guard_template_for_manifest
from llama_mobile.runtime_harness.measure import keeps_eager_model, measure_parity
from llama_mobile.runtime_harness.parity import CORPUS_DIR, eval_token_ids, gate, reference_logits

log = logging.getLogger(__name__)

STAGES = ("check", "load", "build", "lower", "bundle")


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
    adapters: list[Adapter] = field(default_factory=list)

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
    adapter_programs: list[AdapterProgram] = field(default_factory=list)


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
            self._preflight(preset.architecture, recipe, asked_context(request, preset.default_context))
        return Checked(preset, recipe, target, get_backend(target))

    def _preflight(self, arch: Architecture, recipe: Recipe, context: int) -> None:
        estimate = check_export_fits(arch, recipe, context)
        self.progress.note(f"memory preflight: about {estimate / 2**30:.1f} GiB needed")

    def load(self, checked: Checked) -> Loaded:
        request, preset, recipe = self.request, checked.preset, checked.recipe
        priced = request.memory_check and preset is None  # a generic checkpoint: priced from its config, before its weights
        model = load_checkpoint(request.model, request.checkpoint, preflight=(lambda arch: self._preflight(
            arch, recipe, asked_context(request, 1024))) if priced else None)
        if request.task:
            model.task = request.task
        checked.recipe = recipe = with_kv_cache(self._kept_quantization(checked, model), request)
        arch = model.architecture
        check_recipe_fits(recipe, linear_widths(arch), arch.dim)
        tokenizer = Tokenizer(model.tokenizer_path)
        check_vocab(tokenizer, arch.vocab_size)
        context = asked_context(request, preset.default_context if preset else 1024)
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
        adapters = read_adapters(request.adapters, arch, bool(model.prequantized))
        self.progress.note(f"{model.preset}: {arch.n_layers} blocks, dim {arch.dim}, "
                           f"{arch.param_count() / 1e6:.0f}M parameters, context {context}"
                           + (f", {len(adapters)} LoRA adapters" if adapters else ""))
        return Loaded(model, tokenizer, context, fitted, adapters)

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
            recipe_quantizer = PartQuantizer(model, recipe, tied=arch.tied_embeddings, calibrator=calibrator)
            # a checkpoint's quantized matrices kept as they are; any other matrix by the recipe's scheme for it
            quantizer = PrequantizedQuantizer(model, loaded.model.prequantized, tied=arch.tied_embeddings,
                                              fallback=recipe_quantizer) \
                if loaded.model.prequantized else recipe_quantizer
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
        external_weights = (checked.backend.external_weights and (arch.tied_embeddings or bool(loaded.adapters))
                            and not (request.single_file or apple))
        lowered = lower(built.model, target, metadata, max_seq_len, external_weights=external_weights)
        built.adapter_programs = lower_adapters(
            built.model, loaded.adapters, lowered, note=self.progress.note,
            lower_one=lambda keep: lower(built.model, target, metadata, max_seq_len, external_weights=True,
                                         keep_inside=keep))
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
            write_adapter_programs(staging, built.adapter_programs)
            parity = self._gate(checked, built, lowered, staging, extras) if request.validate else None
            adapters = gate_adapters(built.adapter_programs, model=request.model, checkpoint=request.checkpoint,
                                     context=loaded.context, token_ids=built.token_ids, weights=staging / WEIGHTS_NAME,
                                     staging=staging, thresholds=dataclasses.asdict(recipe.thresholds),
                                     note=self.progress.note) if request.validate \
                else adapter_entries(built.adapter_programs)
            parity = with_adapter_failures(parity, adapters)
            if extras is not None and extras.temporary is not None:  # extracted for the checks only
                shutil.rmtree(extras.temporary)
            manifest = write_manifest(staging, self._manifest(checked, loaded, built, lowered, tokenizer_file,
                                                              extras, parity, adapters))
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
                  tokenizer_file: Path, extras: Extras | None, parity: dict | None,
                  adapters: list[dict]) -> Manifest:
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
            adapters=adapters or None,
        )


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
