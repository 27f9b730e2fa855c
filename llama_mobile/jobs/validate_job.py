"""`llama-mobile validate`: a bundle against its float reference checkpoint, gated by thresholds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_mobile.core.bundle import Bundle, verify_bundle
from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.core.progress import Progress
from llama_mobile.core.tokenizer import Tokenizer, chat_prompt
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.config_fields import parse_json, read_user_text
from llama_mobile.export.model import build_model, load_custom_ops
from llama_mobile.runtime_harness.greedy import (
    eager_greedy,
    match_length,
    program_greedy,
)
from llama_mobile.runtime_harness.guard import EagerModel, classify
from llama_mobile.runtime_harness.guard_prompt import format_guard_prompt
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


def run_validation(request: ValidationRequest, progress: Progress | None = None) -> dict:

    progress = progress or Progress(STAGES)
    if request.gate_on not in REFERENCES:
        raise UsageError(f"--gate-on {request.gate_on!r}", fix=f"use one of {', '.join(REFERENCES)}")
    check_thresholds(request.thresholds)
    with progress.stage("verify"):
        bundle = verify_bundle(request.bundle)
        manifest = bundle.manifest
        tokenizer = Tokenizer(bundle.tokenizer)
        context = bundle.context_length
        token_ids = eval_token_ids(tokenizer, min(request.positions, context), request.text,
                                   bos_id=manifest.special_tokens.bos_id)
        template = vars(bundle.chat_template)
        prompts = read_prompts(request.prompts or PROMPTS)
        if request.guard_prompts is not None:
            read_guard_prompts(request.guard_prompts)  # a bad file fails here, not after the reference build
        prompt_ids = [tokenizer.encode(chat_prompt(template, p)) for p in prompts]
        steps = request.generation_steps
        prompt_ids = [ids for ids in prompt_ids if len(ids) + steps < context]
    load_custom_ops()
    references, greedy_reference, guard_reference = {}, {}, None
    with progress.stage("reference", str(request.reference or "embedded weights")):

        preset = manifest.model.preset  # a pruned model names itself; its shapes come from its config
        loaded = load_checkpoint(preset if preset in MODEL_PRESETS else GENERIC_MODEL, request.reference)
        state = loaded.state_dict
        for name, dtype in REFERENCES.items():
            model = build_model(loaded.architecture, context, state, dtype=dtype)
            references[name] = reference_logits(model, token_ids)
            if name == request.gate_on:
                greedy_reference = {i: eager_greedy(model, ids, steps) for i, ids in enumerate(prompt_ids)}
                if bundle.is_guard:
                    guard_reference = guard_verdicts(model, tokenizer, bundle, request)
            del model
    with progress.stage("program"):
        program = Program.of(bundle)
        candidate = program.logits_per_position(token_ids)
    thresholds = {**manifest.recipe.get("thresholds", {}), **request.thresholds}
    results = {}
    for name, logits in references.items():
        result = gate(compare_logits(logits, candidate, token_ids), thresholds, reference=f"{name} eager")
        results[name] = result.to_dict()
        progress.note(result.summary())
    with progress.stage("generation", f"{len(prompt_ids)} prompts x {steps} tokens"):
        matches = []
        for i, ids in enumerate(prompt_ids):
            got = program_greedy(Program.of(bundle), ids, steps)
            matches.append(match_length(greedy_reference[i], got))
    generation = {"prompts": len(matches), "tokens": steps, "match_lengths": matches,
                  "mean_match": sum(matches) / max(len(matches), 1),
                  "exact": sum(m == steps for m in matches)}
    gated = results[request.gate_on]
    report = {"bundle": str(request.bundle), "passed": gated["passed"], "gate_on": request.gate_on,
              "thresholds": thresholds, "references": results, "generation": generation}
    if guard_reference is not None:
        with progress.stage("guard", f"{len(guard_reference)} conversations"):
            report["guard"] = guard_agreement(guard_reference, guard_verdicts(program, tokenizer, bundle, request))
        limit = thresholds.get("min_verdict_agreement", 1.0)
        if report["guard"]["verdict_agreement"] < limit:
            gated["failures"].append(f"verdict_agreement {report['guard']['verdict_agreement']:.4f} < {limit:.4f} "
                                     f"(off by {limit - report['guard']['verdict_agreement']:.4f})")
            gated["passed"] = report["passed"] = False
        progress.note(f"guard: verdicts agree on {report['guard']['verdict_agreement']:.0%}, categories on "
                      f"{report['guard']['category_agreement']:.0%} of {len(guard_reference)} conversations")
    return report


def guard_verdicts(model_or_program, tokenizer, bundle: Bundle, request: ValidationRequest) -> list[dict]:
    """Classify the Guard prompt set; an eager model is wrapped to look like a program."""

    runner = model_or_program if hasattr(model_or_program, "logits_per_position") else EagerModel(model_or_program)
    eos = bundle.stop_ids
    verdicts = []
    for turns in read_guard_prompts(request.guard_prompts or GUARD_PROMPTS):
        verdicts.append(classify(runner, tokenizer, format_guard_prompt(turns), eos).to_dict())
    return verdicts


def guard_agreement(reference: list[dict], candidate: list[dict]) -> dict:
    same_verdict = [r["verdict"] == c["verdict"] for r, c in zip(reference, candidate)]
    same_categories = [r["verdict"] == c["verdict"] and r["categories"] == c["categories"]
                       for r, c in zip(reference, candidate)]
    return {"conversations": len(reference), "verdict_agreement": sum(same_verdict) / max(len(reference), 1),
            "category_agreement": sum(same_categories) / max(len(reference), 1),
            "p_unsafe_max_difference": max((abs(r["p_unsafe"] - c["p_unsafe"]) for r, c in zip(reference, candidate)),
                                           default=0.0),
            "reference": reference, "candidate": candidate}
