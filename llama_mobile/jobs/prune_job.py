"""The prune job: check -> load -> calibrate -> prune -> distill -> write a Hugging Face checkpoint.

The checkpoint is written whole or not at all (staged_directory); its config.json carries the pruned
shapes, the model's name and task, and the history the export job copies into a bundle's manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import check_replaceable, check_writable, is_pruned_checkpoint, staged_directory
from llama_mobile.core.errors import UsageError
from llama_mobile.core.hashing import sha256_file
from llama_mobile.core.memory import peak_rss_bytes
from llama_mobile.core.presets import GENERIC_MODEL, get_model_preset
from llama_mobile.core.progress import Progress
from llama_mobile.core.tokenizer import Tokenizer, check_vocab
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.config_fields import read_user_text
from llama_mobile.export.hf_writer import write_hf_checkpoint
from llama_mobile.export.loaded import LoadedModel
from llama_mobile.export.model import build_model
from llama_mobile.jobs.base import Job
from llama_mobile.quantize.prune import attention, blocks, mlp, vocab
from llama_mobile.quantize.prune.blocks import BLOCK_METHODS
from llama_mobile.quantize.prune.distill import (
    DistillConfig,
    distill,
    kl_divergence,
    window_logits,
)
from llama_mobile.quantize.prune.importance import Importance, measure_importance
from llama_mobile.quantize.prune.report import REPORT_NAME, full_report, history_entry
from llama_mobile.runtime_harness.guard_prompt import LLAMA_GUARD_3_1B_CATEGORIES
from llama_mobile.runtime_harness.metrics import perplexity
from llama_mobile.runtime_harness.parity import CORPUS

log = logging.getLogger(__name__)

STAGES = ("check", "load", "calibrate", "prune", "distill", "write")
DTYPES = ("fp32", "bf16")


@dataclass
class PruneRequest:
    model: str
    checkpoint: Path | None
    output: Path  # the pruned checkpoint folder
    drop_blocks: int | None = None
    drop_blocks_at: list[int] | None = None
    block_choice: str = "importance"  # or "last": the naive baseline
    mlp_hidden: list[int] | None = None  # one width for every block, or one per remaining block
    kv_heads: int | None = None
    keep_output_tokens: str | None = None  # "guard", a comma list, or a file of tokens
    calibration: Path | None = None  # text; the shipped alice.txt by default
    eval_text: Path | None = None  # the calibration text's held-out tail by default
    seq_len: int = 128
    calibration_windows: int = 16
    eval_windows: int = 4
    distill_steps: int = 0
    teacher: Path | None = None  # default: the unpruned source model
    lr: float = 1e-4
    save_every: int = 25
    dtype: str = "fp32"
    name: str | None = None
    task: str | None = None  # "guard" marks a generic Llama checkpoint as a Llama Guard classifier


@dataclass
class PruneResult:
    output: Path
    report: dict
    seconds: dict[str, float] = field(default_factory=dict)


def check_prune_request(request: PruneRequest):

    preset = None if request.model == GENERIC_MODEL else get_model_preset(request.model)
    if preset is None and request.checkpoint is None:
        raise UsageError("--model llama needs --checkpoint", fix="pass --checkpoint PATH")
    if request.drop_blocks is not None and request.drop_blocks_at is not None:
        raise UsageError("--drop-blocks and --drop-blocks-at both given", fix="choose blocks one way")
    if request.drop_blocks is not None and request.drop_blocks < 0:
        raise UsageError(f"--drop-blocks {request.drop_blocks} is negative", fix="give a count of blocks to drop")
    if request.block_choice not in BLOCK_METHODS:
        raise UsageError(f"unknown --block-choice {request.block_choice!r}", fix=f"use {', '.join(BLOCK_METHODS)}")
    if request.seq_len < 8:
        raise UsageError(f"--seq-len {request.seq_len} is too short", fix="use at least 8 tokens")
    if request.calibration_windows < 1 or request.eval_windows < 1:
        raise UsageError("calibration and evaluation need at least one window each", fix="raise the counts")
    if request.distill_steps < 0 or request.lr <= 0 or request.save_every < 1:
        raise UsageError("--distill-steps must be >= 0, --lr > 0, --save-every >= 1", fix="correct the value")
    if request.dtype not in DTYPES:
        raise UsageError(f"--dtype {request.dtype!r}", fix=f"use one of {', '.join(DTYPES)}")
    for path in (request.calibration, request.eval_text):
        if path is not None and not Path(path).is_file():
            raise UsageError("text file not found", fix="pass a UTF-8 text file") from None
    if preset is not None and request.drop_blocks is not None and request.drop_blocks >= preset.architecture.n_layers:
        raise UsageError(f"dropping {request.drop_blocks} of {preset.architecture.n_layers} blocks leaves none",
                         fix="drop fewer blocks than the model has")
    check_replaceable(Path(request.output), ours=is_pruned_checkpoint, what="a pruned checkpoint this tool wrote",
                      option="-o", inputs={"source checkpoint": request.checkpoint, "teacher": request.teacher})
    check_writable(Path(request.output).parent)
    return preset


def text_windows(tokenizer, path: Path, seq_len: int, bos_id: int) -> list[list[int]]:
    """Consecutive windows of seq_len tokens (BOS then seq_len - 1 tokens of text)."""
    ids = tokenizer.encode(read_user_text(Path(path), what="calibration text"))
    body = seq_len - 1
    windows = [[bos_id, *ids[i:i + body]] for i in range(0, len(ids) - body + 1, body)]
    if not windows:
        raise UsageError(f"{path} has {len(ids)} tokens, fewer than one window of {seq_len}",
                         fix="use a longer text or a smaller --seq-len")
    return windows


def split_windows(request: PruneRequest, tokenizer, bos_id: int) -> tuple[list, list, dict]:

    calibration_path = Path(request.calibration or CORPUS)
    calibration = text_windows(tokenizer, calibration_path, request.seq_len, bos_id)
    if request.eval_text is None or Path(request.eval_text).resolve() == calibration_path.resolve():
        if len(calibration) < 2:
            raise UsageError(f"{calibration_path} gives one window: too short to hold some back for evaluation",
                             fix="use a longer text, a smaller --seq-len, or --eval-text")
        held = min(request.eval_windows, max(1, len(calibration) // 3))
        evaluate, calibration = calibration[-held:], calibration[:-held]
        eval_path = calibration_path
    else:
        eval_path = Path(request.eval_text)
        evaluate = text_windows(tokenizer, eval_path, request.seq_len, bos_id)[:request.eval_windows]
    calibration = calibration[:request.calibration_windows]
    info = {"calibration_text": str(calibration_path), "eval_text": str(eval_path),
            "calibration_sha256": sha256_file(calibration_path), "seq_len": request.seq_len,
            "calibration_windows": len(calibration), "eval_windows": len(evaluate),
            "held_out": eval_path == calibration_path}
    return calibration, evaluate, info


def eager(arch, seq_len: int, state: dict):
    """The export model on standard SDPA (autograd works through it), scoring every position."""

    model = build_model(arch, seq_len, state, attention_kernel="sdpa")
    model.all_logits = True
    return model


def quality(model, reference, windows: list[list[int]]) -> dict:
    """Perplexity of the text, and KL / top-1 agreement with the reference (over kept output tokens)."""


    kept = model.output_token_ids if model.arch.output_token_ids else None
    nll, count, kl, agree = 0.0, 0, 0.0, 0.0
    with torch.no_grad():
        for window in windows:
            logits = window_logits(model, window)
            ref = window_logits(reference, window) if reference is not model else logits
            if kept is None:
                nll += math.log(perplexity(logits[:-1], torch.tensor(window[1:]))) * (len(window) - 1)
                count += len(window) - 1
            kl += float(kl_divergence(ref, logits, kept))
            if kept is not None:
                ref, logits = ref.index_select(-1, kept), logits.index_select(-1, kept)
            agree += float((ref.argmax(-1) == logits.argmax(-1)).double().mean())
    # With a pruned output layer most text tokens have no logit: perplexity of the text means nothing.
    ppl = None if kept is not None else math.exp(nll / count)
    return {"perplexity": None if ppl is None else round(ppl, 4), "kl_to_original": round(kl / len(windows), 6),
            "top1_agreement": round(agree / len(windows), 4)}


def check_against(request: PruneRequest, arch, tokenizer, eos_ids) -> list[int] | None:
    """What the loaded shapes rule out, before any calibration; the output tokens to keep."""

    dropped = blocks.choose_blocks(arch.n_layers, count=request.drop_blocks, at=request.drop_blocks_at,
                                   method="last")
    if request.mlp_hidden:
        remaining = arch.n_layers - len(dropped)
        if len(request.mlp_hidden) not in (1, remaining):
            raise UsageError(f"{len(request.mlp_hidden)} MLP widths for {remaining} blocks (after block pruning)",
                             fix="give one width, or one per remaining block")
        widest = max(arch.ffn_hidden_of(i) for i in range(arch.n_layers))
        if max(request.mlp_hidden) > widest or min(request.mlp_hidden) < 1:
            raise UsageError(f"MLP width {max(request.mlp_hidden)} is outside 1..{widest} (the current width)",
                             fix="pruning only narrows: choose a smaller --mlp-hidden")
    if request.kv_heads is not None:
        attention.choose_groups(arch, request.kv_heads, [])
    if not request.keep_output_tokens:
        return None
    return vocab.parse_keep_tokens(request.keep_output_tokens, tokenizer, arch.vocab_size, eos_ids,
                                   [c.code for c in LLAMA_GUARD_3_1B_CATEGORIES])


@dataclass
class Source:
    """The loaded checkpoint in float, with the text windows the job measures on."""

    loaded: LoadedModel
    arch: Architecture
    tokenizer: Tokenizer
    state: dict[str, torch.Tensor]
    calibration: list[list[int]]
    evaluate: list[list[int]]
    calibration_info: dict
    keep_ids: list[int] | None


@dataclass
class Calibrated:
    reference: torch.nn.Module  # the unpruned model, scoring every position
    before: dict  # its quality on the evaluation windows
    importance: Importance | None


@dataclass
class Pruned:
    arch: Architecture
    state: dict[str, torch.Tensor]
    removed: dict
    quality: dict  # the pruned model's quality before any distillation
    distillation: dict | None = None
    distilled: dict | None = None


class PruneJob(Job):
    STAGES = STAGES

    def run(self) -> PruneResult:
        request, progress = self.request, self.progress
        with progress.stage("check"):
            check_prune_request(request)
        with progress.stage("load", str(request.checkpoint or "embedded weights")):
            source = self.load()
        by_importance = bool((request.drop_blocks and request.block_choice == "importance") or request.mlp_hidden
                             or request.kv_heads is not None)
        with progress.stage("calibrate", f"{len(source.calibration)} windows" if by_importance
                            else "nothing to measure"):
            calibrated = self.calibrate(source, by_importance)
        with progress.stage("prune"):
            pruned = self.prune(source, calibrated)
        with progress.stage("distill", f"{request.distill_steps} steps" if request.distill_steps else "skipped"):
            if request.distill_steps:
                self.distill(source, calibrated, pruned)
        return self.write(source, calibrated, pruned)

    def load(self) -> Source:
        request = self.request
        loaded = load_checkpoint(request.model, request.checkpoint)
        if request.task:
            loaded.task = request.task
        original = loaded.architecture
        tokenizer = Tokenizer(loaded.tokenizer_path)
        check_vocab(tokenizer, original.vocab_size)
        state = {k: v.float() for k, v in loaded.state_dict.items()}
        loaded.state_dict = {}
        calibration, evaluate, calibration_info = split_windows(request, tokenizer, loaded.specials.bos_id)
        keep_ids = check_against(request, original, tokenizer, loaded.specials.eos_ids)
        self.progress.note(f"{loaded.preset}: {original.n_layers} blocks, {original.param_count() / 1e6:.0f}M "
                           f"parameters; {len(calibration)} calibration and {len(evaluate)} evaluation windows of "
                           f"{request.seq_len}")
        return Source(loaded, original, tokenizer, state, calibration, evaluate, calibration_info, keep_ids)

    def calibrate(self, source: Source, by_importance: bool) -> Calibrated:
        reference = eager(source.arch, self.request.seq_len, source.state)
        before = quality(reference, reference, source.evaluate)
        self.progress.note(f"unpruned: perplexity {before['perplexity']}")
        importance = measure_importance(reference, source.calibration) if by_importance else None
        return Calibrated(reference, before, importance)

    def prune(self, source: Source, calibrated: Calibrated) -> Pruned:
        request, original, importance = self.request, source.arch, calibrated.importance
        arch, state, removed = original, source.state, {}
        dropped = blocks.choose_blocks(original.n_layers, count=request.drop_blocks, at=request.drop_blocks_at,
                                       method=request.block_choice,
                                       influence=importance.block if importance else None)
        kept_layers = [i for i in range(original.n_layers) if i not in set(dropped)]
        state, arch = blocks.drop_blocks(state, arch, dropped)
        if dropped:
            removed["blocks"] = {"dropped": dropped, "choice": "explicit" if request.drop_blocks_at is not None
                                 else request.block_choice}
        if request.mlp_hidden:
            widths = mlp.target_widths(arch, list(request.mlp_hidden))
            keep = mlp.choose_neurons([importance.mlp[i] for i in kept_layers], widths)
            state, arch = mlp.prune_mlp(state, arch, keep)
            removed["mlp"] = {"widths": widths, "criterion": "mean |silu(w1 x) * (w3 x)| per neuron"}
        if request.kv_heads is not None:
            keep = attention.choose_groups(arch, request.kv_heads, [importance.kv_groups[i] for i in kept_layers])
            state, arch = attention.prune_kv_groups(state, arch, keep)
            removed["kv_groups"] = {"kept_per_block": [k.tolist() for k in keep], "n_kv_heads": request.kv_heads,
                                    "criterion": "attention-output norm of the group's query heads"}
        if source.keep_ids is not None:
            ids = source.keep_ids
            state, arch = vocab.prune_output(state, arch, ids)
            removed["output_vocabulary"] = {"kept": len(ids), "of": original.output_rows,
                                            "spec": request.keep_output_tokens, "token_ids": ids,
                                            "tokens": [source.tokenizer.decode([i]) for i in ids]}
        arch.check()
        student = eager(arch, request.seq_len, state)
        pruned = quality(student, calibrated.reference, source.evaluate)
        self.progress.note(f"pruned to {arch.n_layers} blocks, {arch.param_count() / 1e6:.0f}M parameters: "
                           f"perplexity {pruned['perplexity']}, KL to original {pruned['kl_to_original']:.4f}")
        return Pruned(arch, state, removed, pruned)

    def distill(self, source: Source, calibrated: Calibrated, pruned: Pruned) -> None:
        student, pruned.distillation, pruned.distilled = _distill(
            self.request, source.loaded, pruned.arch, pruned.state, calibrated.reference, source.calibration,
            source.evaluate, self.resume_dir, self.progress)
        pruned.state = {k: v for k, v in student.state_dict().items()
                        if not (pruned.arch.tied_embeddings and k == "output.weight")}

    @property
    def resume_dir(self) -> Path:
        output = Path(self.request.output)
        return output.parent / f".{output.name}.distill-state"

    def write(self, source: Source, calibrated: Calibrated, pruned: Pruned) -> PruneResult:
        request, loaded, progress = self.request, source.loaded, self.progress
        output = Path(request.output)
        name = request.name or (loaded.preset if loaded.preset.endswith("-pruned") else f"{loaded.preset}-pruned")
        origin = {"preset": loaded.preset, "format": loaded.source_format,
                  "files": [{"path": s.path, "sha256": s.sha256} for s in loaded.sources]}
        before = calibrated.before
        quality_record = {"eval_text": source.calibration_info["eval_text"], "unpruned": before,
                          "pruned": pruned.quality, "distilled": pruned.distilled}
        if pruned.quality["perplexity"] and before["perplexity"]:
            quality_record["perplexity_ratio_pruned"] = round(pruned.quality["perplexity"] / before["perplexity"], 4)
            if pruned.distilled:
                quality_record["perplexity_ratio_distilled"] = round(
                    pruned.distilled["perplexity"] / before["perplexity"], 4)
        entry = history_entry(origin, source.arch, pruned.arch, pruned.removed or {"nothing": True}, quality_record)
        report = full_report(entry, calibrated.importance.to_dict() if calibrated.importance else None,
                             source.calibration_info, pruned.distillation, dict(progress.seconds))
        with progress.stage("write", str(output)), staged_directory(output) as staging:
            write_hf_checkpoint(staging, pruned.arch, pruned.state, tokenizer_path=loaded.tokenizer_path,
                                bos_id=loaded.specials.bos_id, eos_ids=loaded.specials.eos_ids, dtype=request.dtype,
                                section={"name": name, "task": loaded.task, "history": [*loaded.history, entry]})
            report["seconds"] = dict(progress.seconds)
            report["peak_rss_bytes"] = peak_rss_bytes()
            (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(self.resume_dir, ignore_errors=True)  # the checkpoint is written: nothing left to resume
        return PruneResult(output=output, report=report, seconds=dict(progress.seconds))


def run_prune(request: PruneRequest, progress: Progress | None = None) -> PruneResult:
    return PruneJob(request, progress).run()


def _distill(request, loaded, arch, state, reference, calibration, evaluate, resume_dir, progress):

    teacher = reference
    if request.teacher is not None:

        taught = load_checkpoint(GENERIC_MODEL, request.teacher)
        if taught.architecture.vocab_size != arch.vocab_size:
            raise UsageError(f"teacher vocabulary {taught.architecture.vocab_size} is not the student's "
                             f"{arch.vocab_size}", fix="distill from the model that was pruned")
        teacher = eager(taught.architecture, request.seq_len, {k: v.float() for k, v in taught.state_dict.items()})
    # The student trains in place: it gets its own copies of every tensor it shares with the reference.
    frozen = "tok_embeddings.weight"
    student = eager(arch, request.seq_len, {k: v if k == frozen else v.clone() for k, v in state.items()})
    fingerprint = hashlib.sha256(json.dumps({
        "request": {k: str(v) for k, v in vars(request).items() if k not in ("distill_steps", "save_every")},
        "sources": [s.sha256 for s in loaded.sources], "arch": arch.to_dict(),
    }, sort_keys=True).encode()).hexdigest()
    config = DistillConfig(steps=request.distill_steps, lr=request.lr, save_every=request.save_every,
                           state_dir=resume_dir, fingerprint=fingerprint)
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if step == 1 or step % 10 == 0 or step == request.distill_steps:
            rate = (time.perf_counter() - started) / max(step, 1)
            progress.note(f"step {step}/{request.distill_steps}  KL {loss:.4f}  ({rate:.2f}s/step)")

    result = distill(student, teacher, calibration, evaluate, config, on_step)
    if result.resumed_from:
        progress.note(f"resumed from step {result.resumed_from} ({resume_dir})")
    after = quality(student, reference, evaluate)
    progress.note(f"distilled: KL {result.kl_before:.4f} -> {result.kl_after:.4f}, perplexity {after['perplexity']}")
    return student, result.to_dict(), after
