"""`llama-mobile validate`: a bundle against its float reference checkpoint, gated by thresholds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.core.bundle import Bundle, verify_bundle
from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.core.progress import Progress
from llama_mobile.core.reports import GenerationMatch, GuardAgreement, ValidationReport
from llama_mobile.core.tokenizer import Tokenizer, chat_prompt
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.config_fields import parse_json, read_user_text
from llama_mobile.export.model import build_model, load_custom_ops
from llama_mobile.jobs.base import Job
from llama_mobile.runtime_harness.greedy import (
    eager_greedy,
    match_length,
    program_greedy,
)
from llama_mobile.runtime_harness.guard import EagerModel, classify
from llama_mobile.runtime_harness.guard_prompt import format_guard_prompt
from llama_mobile.runtime_harness.host import refuse_off_macos
from llama_mobile.runtime_harness.metrics import compare_logits
from llama_mobile.runtime_harness.parity import (
    GUARD_PROMPTS,
    PROMPTS,
    check_thresholds,
    eval_token_ids,
    gate,
    reference_logits,
)
from llama_mobile.runtime_harness.program import Program

STAGES = ("verify", "reference", "program", "generation", "guard")
REFERENCES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ValidationRequest:
    bundle: Path
    reference: Path | None  # None: the preset's embedded weights
    positions: int = 256
    text: Path | None = None
    prompts: Path | None = None
    gate_on: str = "fp32"
    thresholds: dict = field(default_factory=dict)  # overrides of the recipe's promises
    generation_steps: int = 24
    guard_prompts: Path | None = None  # JSONL of {"user": ..., "assistant": ...} for Guard bundles
    variant: str | None = None  # a bundle's variant (export --targets) instead of its top-level program


def _jsonl(path: Path, what: str, fix: str):
    """(line number, value) of each non-blank line of a JSONL file a user passed; any failure is one line."""
    text = read_user_text(path, what=what, fix=fix)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, parse_json(line)
        except ValueError as exc:
            raise ConfigError(f"line {number} is not valid JSON ({str(exc)[:120]})", path=path, fix=fix) from None


def read_prompts(path: Path) -> list[str]:
    fix = 'write one {"prompt": "..."} per line'
    prompts = []
    for number, item in _jsonl(path, "prompts file", fix):
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise ConfigError(f"line {number} is not a JSON object with a 'prompt' string", path=path, fix=fix)
        prompts.append(prompt)
    if not prompts:
        raise ConfigError("no prompts", path=path, fix='write one {"prompt": "..."} per line')
    return prompts


def read_guard_prompts(path: Path) -> list[list[dict]]:
    """Conversations of a JSONL file of {"user": ..., "assistant": ...} (assistant optional), checked whole."""
    fix = 'write one {"user": "...", "assistant": "..."} per line (assistant optional)'
    conversations = []
    for number, item in _jsonl(path, "Guard prompts file", fix):
        if (not isinstance(item, dict) or not isinstance(item.get("user"), str)
                or not isinstance(item.get("assistant") or "", str)):
            raise ConfigError(f"line {number} is not an object with a 'user' string (and an optional "
                              "'assistant' string)", path=path, fix=fix)
        turns = [{"role": "user", "content": item["user"]}]
        if item.get("assistant"):
            turns.append({"role": "assistant", "content": item["assistant"]})
        conversations.append(turns)
    if not conversations:
        raise ConfigError("no conversations", path=path, fix=fix)
    return conversations


@dataclass
class Inputs:
    """What the verify stage reads from the bundle and the request, before any model is built."""

    bundle: Bundle
    tokenizer: Tokenizer
    token_ids: list[int]  # the evaluation text
    prompt_ids: list[list[int]]  # the greedy-generation prompts, in the bundle's chat template


@dataclass
class References:
    logits: dict[str, torch.Tensor]  # reference name -> eager logits on the evaluation text
    greedy: dict[int, list[int]]  # prompt index -> the gated reference's greedy tokens
    guard: list[dict] | None  # the gated reference's Guard verdicts (Guard bundles)


class ValidationJob(Job):
    STAGES = STAGES

    def run(self) -> ValidationReport:
        request, progress = self.request, self.progress
        if request.gate_on not in REFERENCES:
            raise UsageError(f"--gate-on {request.gate_on!r}", fix=f"use one of {', '.join(REFERENCES)}")
        check_thresholds(request.thresholds)
        with progress.stage("verify"):
            inputs = self.verify()
        load_custom_ops()
        with progress.stage("reference", str(request.reference or "embedded weights")):
            references = self.reference(inputs)
        with progress.stage("program"):
            program = Program.of(inputs.bundle, variant=request.variant)
            report = self.gate(inputs, references, program)
        with progress.stage("generation", f"{len(inputs.prompt_ids)} prompts x {request.generation_steps} tokens"):
            report.generation = self.generation(inputs, references)
        if references.guard is not None:
            with progress.stage("guard", f"{len(references.guard)} conversations"):
                self.guard(inputs, references, program, report)
        return report

    def verify(self) -> Inputs:
        request = self.request
        bundle = verify_bundle(request.bundle)
        if request.variant is not None:
            bundle.variant_files(request.variant)  # an unknown or skipped variant stops here
        # before the reference is built: a program this host cannot run stops here
        refuse_off_macos(bundle, bundle.manifest.variant(request.variant)["backend"] if request.variant else None)
        tokenizer = Tokenizer(bundle.tokenizer)
        context = bundle.context_length
        token_ids = eval_token_ids(tokenizer, min(request.positions, context), request.text,
                                   bos_id=bundle.manifest.special_tokens.bos_id)
        prompts = read_prompts(request.prompts or PROMPTS)
        if request.guard_prompts is not None:
            read_guard_prompts(request.guard_prompts)  # a bad file fails here, not after the reference build
        prompt_ids = [tokenizer.encode(chat_prompt(bundle.chat_template, p)) for p in prompts]
        prompt_ids = [ids for ids in prompt_ids if len(ids) + request.generation_steps < context]
        return Inputs(bundle, tokenizer, token_ids, prompt_ids)

    def reference(self, inputs: Inputs) -> References:
        request, bundle = self.request, inputs.bundle
        preset = bundle.manifest.model.preset  # a pruned model names itself; its shapes come from its config
        loaded = load_checkpoint(preset if preset in MODEL_PRESETS else GENERIC_MODEL, request.reference)
        logits, greedy, guard = {}, {}, None
        for name, dtype in REFERENCES.items():
            model = build_model(loaded.architecture, bundle.context_length, loaded.state_dict, dtype=dtype)
            logits[name] = reference_logits(model, inputs.token_ids)
            if name == request.gate_on:
                greedy = {i: eager_greedy(model, ids, request.generation_steps)
                          for i, ids in enumerate(inputs.prompt_ids)}
                if bundle.is_guard:
                    guard = guard_verdicts(model, inputs.tokenizer, bundle, request)
            del model
        return References(logits, greedy, guard)

    def gate(self, inputs: Inputs, references: References, program: Program) -> ValidationReport:
        request = self.request
        candidate = program.logits_per_position(inputs.token_ids)
        manifest = inputs.bundle.manifest
        promised = manifest.thresholds if request.variant is None else \
            ((manifest.variant(request.variant) or {}).get("parity") or {}).get("thresholds", manifest.thresholds)
        thresholds = {**promised, **request.thresholds}
        results = {}
        for name, logits in references.logits.items():
            result = gate(compare_logits(logits, candidate, inputs.token_ids), thresholds, reference=f"{name} eager")
            results[name] = result.to_dict()
            self.progress.note(result.summary())
        return ValidationReport(bundle=str(request.bundle), gate_on=request.gate_on, thresholds=thresholds,
                                references=results,
                                generation=GenerationMatch(0, request.generation_steps, []))

    def generation(self, inputs: Inputs, references: References) -> GenerationMatch:
        steps = self.request.generation_steps
        variant = self.request.variant
        matches = [match_length(references.greedy[i], program_greedy(Program.of(inputs.bundle, variant=variant), ids, steps))
                   for i, ids in enumerate(inputs.prompt_ids)]
        return GenerationMatch(prompts=len(matches), tokens=steps, match_lengths=matches)

    def guard(self, inputs: Inputs, references: References, program: Program, report: ValidationReport) -> None:
        report.guard = agreement = GuardAgreement(
            references.guard, guard_verdicts(program, inputs.tokenizer, inputs.bundle, self.request))
        limit = report.thresholds.get("min_verdict_agreement", 1.0)
        if agreement.verdict_agreement < limit:
            report.fail(f"verdict_agreement {agreement.verdict_agreement:.4f} < {limit:.4f} "
                        f"(off by {limit - agreement.verdict_agreement:.4f})")
        self.progress.note(f"guard: verdicts agree on {agreement.verdict_agreement:.0%}, categories on "
                           f"{agreement.category_agreement:.0%} of {agreement.conversations} conversations")


def run_validation(request: ValidationRequest, progress: Progress | None = None) -> ValidationReport:
    return ValidationJob(request, progress).run()


def guard_verdicts(model_or_program, tokenizer, bundle: Bundle, request: ValidationRequest) -> list[dict]:
    """Classify the Guard prompt set; an eager model is wrapped to look like a program."""

    runner = model_or_program if hasattr(model_or_program, "logits_per_position") else EagerModel(model_or_program)
    eos = bundle.stop_ids
    verdicts = []
    for turns in read_guard_prompts(request.guard_prompts or GUARD_PROMPTS):
        verdicts.append(classify(runner, tokenizer, format_guard_prompt(turns), eos).to_dict())
    return verdicts
