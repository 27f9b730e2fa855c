"""The export job: check -> load -> build (reference + quantize) -> lower -> bundle (with the parity gate)."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llama_mobile.core.atomic import check_writable, staged_directory
from llama_mobile.core.devices import get_device
from llama_mobile.core.errors import ParityFailure, UsageError
from llama_mobile.core.memory import peak_rss_bytes
from llama_mobile.core.presets import GENERIC_MODEL, get_model_preset
from llama_mobile.core.progress import Progress
from llama_mobile.core.targets import TARGETS, get_target
from llama_mobile.core.tokenizer import Tokenizer, check_vocab, tokenizer_kind
from llama_mobile.export.backends import NPU_BACKENDS, backend_module, bind_device
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
from llama_mobile.export.coreml_package import write_coreml_report
from llama_mobile.export.lower import lower, runner_metadata
from llama_mobile.export.model import build_model, load_custom_ops, skeleton
from llama_mobile.export.stream_build import fill_streaming
from llama_mobile.jobs.plan import plan
from llama_mobile.jobs.preflight import check_export_fits
from llama_mobile.quantize.apply import PartQuantizer
from llama_mobile.quantize.pt2e import quantize_for_target
from llama_mobile.quantize.recipe import check_recipe_fits, load_recipe
from llama_mobile.runtime_harness.coreml import coreml_gate_metrics
from llama_mobile.runtime_harness.guard_prompt import (
    guard_template_for_manifest as guard_template,
)
from llama_mobile.runtime_harness.host import on_macos
from llama_mobile.runtime_harness.parity import (
    eval_token_ids,
    gate,
    program_parity,
    reference_logits,
)

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


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    parity: dict | None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0

    @property
    def size_bytes(self) -> int:
        return sum(entry["size"] for entry in self.manifest["files"].values())


def check_request(request: ExportRequest):
    """Everything that can be judged before a single weight is read."""

    preset = None if request.model == GENERIC_MODEL else get_model_preset(request.model)
    if preset is None and request.checkpoint is None:
        raise UsageError("--model llama needs --checkpoint", fix="pass --checkpoint PATH")
    recipe = load_recipe(request.recipe)
    target = get_target(request.target)

    target = bind_device(target, request.device)  # an NPU target takes its SoC from the device preset
    if target.backend not in recipe.targets:
        raise UsageError(f"recipe {recipe.name!r} is for {', '.join(recipe.targets)}, not {target.backend}",
                         fix="pick a recipe listed for this target (`llama-mobile recipes`)")
    if target.backend in NPU_BACKENDS and recipe.pt2e is None:
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
    dtypes = target.option("dtypes", ("fp32",))
    if recipe.dtype not in dtypes:
        raise UsageError(f"target {target.name} computes in {'/'.join(dtypes)}, recipe {recipe.name!r} in "
                         f"{recipe.dtype}", fix=f"use a recipe with dtype = {dtypes[0]!r} (`llama-mobile recipes`)")
    if "mlpackage" in request.formats and target.backend != "coreml":
        raise UsageError(f"--format mlpackage needs a Core ML target, not {target.name}",
                         fix="add --target coreml-ios18 (`llama-mobile targets`)")
    if preset is not None:
        check_recipe_fits(recipe, linear_widths(preset.architecture), preset.architecture.dim)

    backend_module(target).check_environment(target)  # a missing SDK stops here, before any weight is read
    check_writable(request.output_dir)
    return preset, recipe, target


def _other_targets_hint(recipe, target) -> str:
    """Name the targets of the same backend that can run the recipe (e.g. int4 on iOS 18, not 17)."""

    schemes = {q.scheme for q in (recipe.linear, recipe.output, *(o.quant for o in recipe.overrides))}
    able = [t.name for t in TARGETS.values() if t.backend == target.backend and t is not target
            and schemes <= set(t.linear_schemes) and recipe.embedding.scheme in t.embedding_schemes]
    return f", or use --target {able[0]}" if able else ""


def device_plan(request: ExportRequest, arch, recipe, context: int):
    """With --device: the context the device's RAM holds (shrunk or refused with the reason)."""
    if not request.device:
        return None

    return plan(arch, recipe, context=context, device=get_device(request.device))


def linear_widths(arch) -> dict[str, int]:
    widths = {"output": arch.dim}
    for i in range(arch.n_layers):
        for name in ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3"):
            widths[f"layers.{i}.{name}"] = arch.dim
        widths[f"layers.{i}.attention.wo"] = arch.n_heads * arch.head_dim
        widths[f"layers.{i}.feed_forward.w2"] = arch.ffn_hidden_of(i)
    return widths


def run_export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:

    progress = progress or Progress(STAGES)
    with progress.stage("check"):
        preset, recipe, target = check_request(request)
        if request.memory_check and preset is not None:  # before a single weight is read

            estimate = check_export_fits(preset.architecture, recipe, request.context or preset.default_context)
            progress.note(f"memory preflight: about {estimate / 2**30:.1f} GiB needed")
    with progress.stage("load", str(request.checkpoint or "embedded weights")):
        loaded = load_checkpoint(request.model, request.checkpoint)
        if request.task:
            loaded.task = request.task
        arch = loaded.architecture
        check_recipe_fits(recipe, linear_widths(arch), arch.dim)
        tokenizer = Tokenizer(loaded.tokenizer_path)
        check_vocab(tokenizer, arch.vocab_size)
        context = request.context or (preset.default_context if preset else 1024)
        if not 2 <= context <= arch.max_position:
            raise UsageError(f"--context {context} is outside 2..{arch.max_position}", fix="choose a smaller --context")
        if request.memory_check and preset is None:  # a generic checkpoint's shapes are known only now

            estimate = check_export_fits(arch, recipe, context)
            progress.note(f"memory preflight: about {estimate / 2**30:.1f} GiB needed")
        fitted = device_plan(request, arch, recipe, context)
        if fitted is not None:
            context = fitted.context
            for note in fitted.notes:
                progress.note(note)
        progress.note(f"{loaded.preset}: {arch.n_layers} blocks, dim {arch.dim}, "
                      f"{arch.param_count() / 1e6:.0f}M parameters, context {context}")
    load_custom_ops()
    with progress.stage("build", f"{recipe.name}, a block at a time" if recipe.pt2e is None else recipe.name):

        options = dict(backend_module(target).MODEL_OPTIONS)
        if recipe.dtype == "fp16":  # x^2 of the residual stream's outliers overflows fp16 (SmolLM2: |x|~25000)
            options["rms_norm"] = "l2"
        token_ids = eval_token_ids(tokenizer, min(request.positions, context), bos_id=loaded.specials.bos_id)
        pt2e_record = {}
        if recipe.pt2e is not None:  # the backend's quantizer, calibrated on the evaluation tokens

            model = build_model(arch, context, loaded.state_dict, **options)
            loaded.state_dict = {}  # the model owns the tensors now; nothing holds a second reference
            reference = reference_logits(model, token_ids) if request.validate else None
            model, pt2e_record, torchao_configs = *quantize_for_target(model, recipe, target, token_ids,
                                                                       min(context, 256)), {}
        else:  # float weights of one block at a time: the peak is the quantized model plus one block
            model = skeleton(arch, context, **options)
            quantizer = PartQuantizer(model, recipe, tied=arch.tied_embeddings)
            reference = fill_streaming(model, loaded.state_dict, quantize_part=quantizer.quantize,
                                       token_ids=token_ids if request.validate else None,
                                       on_part=lambda part: progress.note(f"{part} done (peak RSS "
                                                                          f"{peak_rss_bytes() / 2**30:.2f} GiB)"))
            loaded.state_dict = {}
            torchao_configs = quantizer.finish()
        if target.backend == "xnnpack" and recipe.dtype != "fp32":  # Core ML takes precision as a compile spec
            import torch

            model = model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[recipe.dtype])
    max_seq_len = min(context, 256)
    metadata = runner_metadata(bos_id=loaded.specials.bos_id, eos_ids=loaded.specials.eos_ids,
                               context_len=context, max_seq_len=max_seq_len, vocab_size=arch.vocab_size,
                               n_layers=arch.n_layers)
    backend = backend_module(target)
    metadata.update(getattr(backend, "RUNNER_METADATA", {}))
    # Off macOS a Core ML program cannot run: its gate scores the quantized eager model, kept for that.
    simulate = request.validate and target.backend == "coreml" and not on_macos()
    with progress.stage("lower", target.name):
        # A tied embedding/output pair is stored once only through ExecuTorch's external weights file.
        apple = request.device is not None and get_device(request.device).vendor == "Apple"
        external_weights = (target.backend == "xnnpack" and arch.tied_embeddings
                            and not (request.single_file or apple))
        lowered = lower(model, target, metadata, max_seq_len, external_weights=external_weights)
        if not simulate:
            del model
        progress.note(f"{lowered.delegated_calls} delegated calls; outside delegates: "
                      + (", ".join(f"{k}x{v}" for k, v in sorted(lowered.portable_ops.items())) or "none"))
    name = request.name or bundle_name(loaded.preset, recipe.name, target.name)
    final = Path(request.output_dir) / name
    parity = None
    with progress.stage("bundle", str(final)), staged_directory(final) as staging:
        tokenizer_file = write_payload(staging, lowered.pte, loaded.tokenizer_path, lowered.weights)
        coreml = None
        if target.backend == "coreml":  # the embedded model's structure, checked on any host

            quantized = sum(not recipe.quant_for(name).is_float for name in linear_widths(arch))
            coreml = write_coreml_report(staging, lowered, target, recipe, arch.n_layers, quantized)
            progress.note(coreml["summary"])
        if request.validate:
            if target.backend == "coreml":
                metrics, method = coreml_gate_metrics(staging / coreml["mlpackage"], model if simulate else None,
                                                      token_ids, reference, recipe.dtype, target)
            else:
                metrics, method = program_parity(staging / PROGRAM_NAME, token_ids, reference), None
            result = gate(metrics, dataclasses.asdict(recipe.thresholds))
            parity = {**result.to_dict(), **({"method": method} if method else {})}
            progress.note(result.summary() + (f" [{method}]" if method else ""))
            write_json(staging / PARITY_NAME, parity)
        if coreml and "mlpackage" not in request.formats:  # extracted for the checks only
            shutil.rmtree(staging / coreml["mlpackage"])
            coreml["mlpackage"] = None
        manifest = write_manifest(staging, {
            "model": {"preset": loaded.preset, "task": loaded.task, "architecture": arch.to_dict(),
                      "source": {"format": loaded.source_format,
                                 "files": [dataclasses.asdict(s) for s in loaded.sources]},
                      "history": loaded.history},
            "recipe": {**recipe.to_dict(), "torchao_configs": torchao_configs,
                       **({"pt2e_quantizer": pt2e_record} if pt2e_record else {})},
            "target": {"name": target.name, "backend": target.backend, "min_os": target.min_os,
                       "options": dict(target.options)},
            "runtime": {"program": PROGRAM_NAME, "weights": WEIGHTS_NAME if lowered.weights else None,
                        "context_length": context, "max_seq_len": max_seq_len,
                        "metadata": metadata, "delegated_calls": lowered.delegated_calls,
                        "tokens_per_call": {"min": 1, "max": max_seq_len if metadata["enable_dynamic_shape"] else 1},
                        **({"coreml": coreml} if coreml else {}),
                        "ops_outside_delegates": lowered.portable_ops,
                        "ops_in_delegates": lowered.delegated_ops,
                        "delegated_share": round(lowered.delegated_ops / max(1, lowered.delegated_ops
                                                 + sum(lowered.portable_ops.values())), 4)},
            "tokenizer": {"file": tokenizer_file.name, "kind": tokenizer_kind(tokenizer_file)},
            "special_tokens": {"bos_id": loaded.specials.bos_id, "eos_ids": list(loaded.specials.eos_ids),
                               "names": loaded.specials.names},
            "prompt_template": dataclasses.asdict(loaded.chat_template),
            "export": {"seconds": {**progress.seconds, **{f"lower.{k}": round(v, 2)
                                                            for k, v in lowered.seconds.items()}},
                       "peak_rss_bytes": peak_rss_bytes()},
            "parity": parity,
            **({"guard": guard_template()} if loaded.task == "guard" else {}),
            **({"device": {**get_device(request.device).to_dict(), "plan": fitted.to_dict()}}
               if request.device else {}),
        })
        if parity is not None and not parity["passed"]:
            rejected = final.with_name(final.name + ".rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            shutil.copytree(staging, rejected)
            raise ParityFailure("; ".join(parity["failures"]), path=rejected,
                                fix="the artifact is kept there for inspection; use a milder recipe, "
                                    "or --no-validate to skip the gate")
    return ExportResult(bundle=final, manifest=manifest, parity=parity, seconds=dict(progress.seconds),
                        peak_rss_bytes=peak_rss_bytes())
