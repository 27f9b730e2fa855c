"""Commands that run a bundle: `generate` and `guard`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, Finite, Text, quiet_libraries, say


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--prompt", default=None, type=Text(), help="the user message")
@click.option("--messages", "messages_file", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help='a whole conversation: JSON [{"role": "system"|"user"|"assistant"|"tool", "content": ...}]; '
              "one reply to it")
@click.option("--tools", "tools_file", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="tool definitions (JSON, OpenAI-style); the reply's tool calls are parsed (Llama 3.2 format)")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=Finite(0.0),
              help="0 is greedy")
@click.option("--raw", is_flag=True, help="send the prompt as is, without the bundle's chat template "
              "(special tokens written in it are parsed)")
@click.option("--json", "as_json", is_flag=True, help="print text and speed as JSON instead of streaming")
@click.option("--adapter", default=None, metavar="NAME",
              help="run the bundle's LoRA adapter NAME (export --adapter) over the same base weights")
def generate(bundle, prompt, messages_file, tools_file, max_new_tokens, temperature, raw, as_json, adapter):
    """Stream a reply from a bundle through ExecuTorch's TextLLMRunner.

    \b
    Examples:
      llama-mobile generate out/smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack --prompt "Name three planets."
      llama-mobile generate BUNDLE --messages conversation.json --tools tools.json --json
      llama-mobile generate BUNDLE --adapter support --prompt "My order has not arrived."
    """
    quiet_libraries()
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.errors import RuntimeFailure, UsageError
    from llama_mobile.core.tokenizer import Tokenizer, chat_prompt
    from llama_mobile.runtime_harness.generate import Runner

    if (prompt is None) == (messages_file is None):
        raise UsageError("give either --prompt or --messages", fix="pass --prompt TEXT or --messages FILE")
    if raw and (messages_file or tools_file):
        raise UsageError("--raw sends one prompt as is", fix="drop --raw with --messages or --tools")
    if messages_file or tools_file:
        return _generate_conversation(bundle, prompt, messages_file, tools_file, max_new_tokens, temperature, as_json,
                                      adapter)
    verified = verify_bundle(bundle)
    # The message cannot write control tokens (<|im_end|>, <|eot_id|>...); --raw sends the caller's text as is.
    text = prompt if raw else chat_prompt(verified.chat_template, prompt)
    n_prompt = len(Tokenizer(verified.tokenizer).encode(text))
    context = verified.context_length
    if n_prompt >= context:
        raise RuntimeFailure(f"the prompt is {n_prompt} tokens but the bundle's context is {context}",
                             path=bundle, fix="shorten the prompt or re-export with a larger --context")
    # An attention-sink program runs past its cache; the runner then bounds one call's new tokens by the cache.
    sliding = verified.manifest.runtime.attention_sink is not None
    max_new_tokens = min(max_new_tokens, context if sliding else context - n_prompt)
    runner = Runner.of(verified, adapter)
    stream = None if as_json else (lambda piece: click.echo(piece, nl=False))
    result = runner.generate(text, max_new_tokens=max_new_tokens, temperature=temperature, on_text=stream,
                             hide=verified.stop_names)
    s = result.stats
    if as_json:
        click.echo(json.dumps({"text": result.text, "stats": s.__dict__}, indent=2))
        return
    click.echo("")
    sys.stdout.flush()
    say(f"prompt {s.prompt_tokens} tokens, prefill {s.prefill_tokens_per_s:.1f} tok/s, "
         f"first token {s.time_to_first_token_ms:.0f} ms; decode {s.generated_tokens} tokens "
         f"at {s.decode_tokens_per_s:.1f} tok/s")



def _generate_conversation(bundle, prompt, messages_file, tools_file, max_new_tokens, temperature, as_json,
                           adapter=None):
    """One reply to a whole conversation (and tools): the chat core's rendering and context policy."""
    from llama_mobile.cli.chat import open_conversation, read_json_file
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.runtime_harness.chat import check_messages
    from llama_mobile.runtime_harness.tools import parse_reply, read_tools, render_messages, with_tools

    verified = verify_bundle(bundle)
    if messages_file:
        messages = check_messages(read_json_file(messages_file, "conversation"))
    else:
        messages = [{"role": "user", "content": prompt}]
    tools = read_tools(read_json_file(tools_file, "tools file")) if tools_file else []
    prepared = render_messages(with_tools(messages, tools))
    if not prepared or prepared[-1]["role"] == "assistant":
        from llama_mobile.core.errors import ConfigError

        raise ConfigError("the conversation ends with an assistant message: nothing to reply to",
                          path=messages_file, fix="end it with a user or tool message")
    conversation = open_conversation(verified, "runner", None, adapter)
    conversation.load(prepared)
    stream = None if as_json else (lambda piece: click.echo(piece, nl=False))
    reply = conversation.reply(max_new_tokens=max_new_tokens, temperature=temperature, on_text=stream)
    parsed = parse_reply(reply.text, tools) if tools else None
    if as_json:
        out = {"text": reply.text, "finish": reply.finish, "dropped_messages": reply.dropped_messages,
               "stats": {"prompt_tokens": reply.prompt_tokens, "generated_tokens": reply.generated_tokens,
                         "time_to_first_token_ms": reply.time_to_first_token_ms,
                         "decode_tokens_per_s": reply.decode_tokens_per_s}}
        if parsed is not None:
            out["tool_calls"] = parsed.to_dict()["tool_calls"]
            out["tool_call_error"] = parsed.error
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    click.echo("")
    sys.stdout.flush()
    if parsed is not None and parsed.calls:
        click.echo("tool_calls: " + json.dumps(parsed.to_dict()["tool_calls"], ensure_ascii=False))
    elif parsed is not None and parsed.error:
        say(f"(not a valid tool call, kept as text: {parsed.error})")
    if reply.dropped_messages:
        say(f"({reply.dropped_messages} oldest messages dropped to fit the context)")
    say(f"prompt {reply.prompt_tokens} tokens, first token {reply.time_to_first_token_ms:.0f} ms; decode "
        f"{reply.generated_tokens} tokens at {reply.decode_tokens_per_s:.1f} tok/s")


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--user", "user_text", type=Text(), default=None, help="the user message to classify")
@click.option("--assistant", "assistant_text", type=Text(), default=None,
              help="an assistant reply to classify (after --user)")
@click.option("--jsonl", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
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
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.errors import UsageError
    from llama_mobile.core.tokenizer import Tokenizer
    from llama_mobile.runtime_harness.guard import classify
    from llama_mobile.runtime_harness.guard_prompt import format_guard_prompt
    from llama_mobile.runtime_harness.program import Program

    verified = verify_bundle(bundle)
    if not verified.is_guard:
        raise UsageError(f"{bundle} is a {verified.task} bundle, not a Llama Guard one",
                         fix="export --model llama-guard-3-1b")
    conversations = []
    if jsonl:
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                conversations.append(_conversation(_json_line(line, jsonl, number), jsonl, number))
        if not conversations:
            raise UsageError(f"{jsonl} holds no conversation", fix="write one JSON object per line to --jsonl")
    elif user_text:
        conversations.append(_conversation({"user": user_text, "assistant": assistant_text}, None, 0))
    else:
        raise UsageError("nothing to classify", fix="pass --user TEXT or --jsonl FILE")
    excluded = [c.strip() for c in exclude.split(",") if c.strip()]
    tokenizer = Tokenizer(verified.tokenizer)
    program = Program.of(verified)
    eos = verified.stop_ids
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


def _json_line(line: str, path, number: int):
    from llama_mobile.core.errors import ConfigError

    try:
        return json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"line {number} is not JSON ({exc.msg})", path=path,
                          fix='write {"user": "...", "assistant": "..."} per line') from None


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
