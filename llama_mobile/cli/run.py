"""Commands that run a bundle: `generate` and `guard`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from llama_mobile.cli.common import quiet_libraries, say


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="the user message")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0.0),
              help="0 is greedy")
@click.option("--raw", is_flag=True, help="send the prompt as is, without the bundle's chat template")
@click.option("--json", "as_json", is_flag=True, help="print text and speed as JSON instead of streaming")
def generate(bundle, prompt, max_new_tokens, temperature, raw, as_json):
    """Stream a reply from a bundle through ExecuTorch's TextLLMRunner.

    \b
    Example:
      llama-mobile generate out/smollm2-135m-instruct-8da4w-mixed-xnnpack --prompt "Name three planets."
    """
    quiet_libraries()
    from llama_mobile.core.errors import RuntimeFailure
    from llama_mobile.core.manifest import verify_bundle
    from llama_mobile.core.tokenizer import Tokenizer
    from llama_mobile.runtime_harness.generate import Runner

    manifest = verify_bundle(bundle)
    template = manifest["prompt_template"]
    text = prompt if raw else template["prefix"] + template["user"].replace("{content}", prompt) + template["assistant_start"]
    tokenizer_path = bundle / manifest["tokenizer"]["file"]
    n_prompt = len(Tokenizer(tokenizer_path).encode(text))
    context = manifest["runtime"]["context_length"]
    if n_prompt >= context:
        raise RuntimeFailure(f"the prompt is {n_prompt} tokens but the bundle's context is {context}",
                             path=bundle, fix="shorten the prompt or re-export with a larger --context")
    max_new_tokens = min(max_new_tokens, context - n_prompt)
    runner = Runner(bundle / manifest["runtime"]["program"], tokenizer_path)
    stream = None if as_json else (lambda piece: click.echo(piece, nl=False))
    specials = manifest["special_tokens"]
    end_tokens = tuple(name for name, token_id in specials.get("names", {}).items() if token_id in specials["eos_ids"])
    result = runner.generate(text, max_new_tokens=max_new_tokens, temperature=temperature, on_text=stream,
                             hide=end_tokens)
    s = result.stats
    if as_json:
        click.echo(json.dumps({"text": result.text, "stats": s.__dict__}, indent=2))
        return
    click.echo("")
    sys.stdout.flush()
    say(f"prompt {s.prompt_tokens} tokens, prefill {s.prefill_tokens_per_s:.1f} tok/s, "
         f"first token {s.time_to_first_token_ms:.0f} ms; decode {s.generated_tokens} tokens "
         f"at {s.decode_tokens_per_s:.1f} tok/s")



@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--user", "user_text", default=None, help="the user message to classify")
@click.option("--assistant", "assistant_text", default=None, help="an assistant reply to classify (after --user)")
@click.option("--jsonl", type=click.Path(path_type=Path, exists=True), default=None,
              help='batch: one {"user": ..., "assistant": ...} or {"conversation": [...]} per line')
@click.option("--exclude", default="", help="category codes to leave out, e.g. S6,S8")
@click.option("--json", "as_json", is_flag=True, help="one JSON verdict per line")
def guard(bundle, user_text, assistant_text, jsonl, exclude, as_json):
    """Classify a conversation with a Llama Guard bundle: safe/unsafe, categories, p(unsafe), latency.

    \b
    Examples:
      llama-mobile guard out/llama-guard-3-1b-guard-int4-xnnpack --user "How do I bake bread?"
      llama-mobile guard BUNDLE --jsonl conversations.jsonl --json
    """
    quiet_libraries()
    from llama_mobile.core.errors import UsageError
    from llama_mobile.core.manifest import verify_bundle
    from llama_mobile.core.tokenizer import Tokenizer
    from llama_mobile.runtime_harness.guard import classify
    from llama_mobile.runtime_harness.guard_prompt import format_guard_prompt
    from llama_mobile.runtime_harness.program import Program

    manifest = verify_bundle(bundle)
    if manifest["model"]["task"] != "guard":
        raise UsageError(f"{bundle} is a {manifest['model']['task']} bundle, not a Llama Guard one",
                         fix="export --model llama-guard-3-1b")
    conversations = []
    if jsonl:
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                conversations.append(_conversation(json.loads(line), jsonl, number))
    elif user_text:
        conversations.append(_conversation({"user": user_text, "assistant": assistant_text}, None, 0))
    else:
        raise UsageError("nothing to classify", fix="pass --user TEXT or --jsonl FILE")
    excluded = [c.strip() for c in exclude.split(",") if c.strip()]
    tokenizer = Tokenizer(bundle / manifest["tokenizer"]["file"])
    program = Program(bundle / manifest["runtime"]["program"])
    eos = tuple(manifest["special_tokens"]["eos_ids"])
    for conversation in conversations:
        result = classify(program, tokenizer, format_guard_prompt(conversation, excluded=excluded), eos)
        if as_json:
            click.echo(json.dumps(result.to_dict()))
            continue
        if result.safe is None:
            click.echo(f"unparseable  p(unsafe)={result.p_unsafe:.2f}  {result.total_ms:.0f} ms  ({result.error})")
        else:
            names = ", ".join(result.categories)
            click.echo(f"{'safe' if result.safe else 'unsafe':7s} {names:12s} p(unsafe)={result.p_unsafe:.2f}   "
                       f"first token {result.time_to_first_token_ms:.0f} ms, total {result.total_ms:.0f} ms")


def _conversation(item, path, number) -> list[dict]:
    from llama_mobile.core.errors import ConfigError

    if isinstance(item, dict) and isinstance(item.get("conversation"), list):
        return item["conversation"]
    if isinstance(item, dict) and isinstance(item.get("user"), str):
        turns = [{"role": "user", "content": item["user"]}]
        if isinstance(item.get("assistant"), str):
            turns.append({"role": "assistant", "content": item["assistant"]})
        return turns
    raise ConfigError(f"line {number} has neither 'user' nor 'conversation'", path=path,
                      fix='write {"user": "...", "assistant": "..."} per line')
