"""`llama-mobile chat BUNDLE`: a conversation on one KV cache, read line by line from stdin."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, Finite, quiet_libraries, say

HELP = "/reset  /system TEXT  /tools FILE  /tools off  /tool RESULT  /quit"


def read_json_file(path: Path, what: str):
    """A JSON file given on the command line; unreadable or malformed is a ConfigError (exit 4)."""
    from llama_mobile.core.errors import ConfigError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} ({exc.strerror})", path=path, fix="pass a readable JSON file") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"the {what} is not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})", path=path,
                          fix="write valid JSON (see README: Chat)") from None


def open_conversation(verified, engine_kind: str, system: str | None, adapter: str | None = None):
    """A Conversation on the bundle's program (engine "program") or TextLLMRunner (engine "runner"), or on
    LoRA adapter ``adapter``'s program."""
    from llama_mobile.core.tokenizer import Tokenizer
    from llama_mobile.runtime_harness.chat import Conversation, ProgramEngine, RunnerEngine
    from llama_mobile.runtime_harness.generate import Runner
    from llama_mobile.runtime_harness.program import Program

    tokenizer = Tokenizer(verified.tokenizer)
    if engine_kind == "program":
        engine = ProgramEngine(Program.of(verified, adapter), tokenizer, verified.stop_ids)
    else:
        engine = RunnerEngine(Runner.of(verified, adapter), verified.context_length)
    return Conversation(engine, tokenizer, verified.chat_template, system=system, stop_names=verified.stop_names)


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--system", default=None, help="system prompt (default: the template's own, if any)")
@click.option("--tools", "tools_file", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="tool definitions (JSON list, OpenAI-style) put in the system turn, Llama 3.2 style")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=Finite(0.0), help="0 is greedy")
@click.option("--engine", type=click.Choice(["runner", "program"]), default="runner", show_default=True,
              help="runner: ExecuTorch's TextLLMRunner (what the apps run); program: the .pte stepped from Python")
def chat(bundle, system, tools_file, max_new_tokens, temperature, engine):
    """Chat with a bundle: every turn prefills only its new tokens on the same KV cache.

    Reads one message per line from stdin; commands: /reset, /system TEXT, /tools FILE, /tools off,
    /tool RESULT (a tool's result as the next turn), /quit. When the conversation outgrows the context,
    the oldest turns are dropped (the system prompt is kept) and the rest is prefilled again.

    \b
    Example:
      llama-mobile chat out/smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack
      printf 'Hi\\nName a planet.\\n/quit\\n' | llama-mobile chat BUNDLE
    """
    quiet_libraries()
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.errors import ConfigError, LlamaMobileError, UsageError
    from llama_mobile.core.tokenizer import conversation_template
    from llama_mobile.runtime_harness.tools import parse_reply, read_tools, tools_system_prompt

    verified = verify_bundle(bundle)
    if verified.is_guard:
        raise UsageError(f"{bundle} is a Llama Guard bundle", fix="use llama-mobile guard")
    conversation_template(verified.chat_template)  # refuse a template without turns before loading anything
    tools = read_tools(read_json_file(tools_file, "tools file")) if tools_file else []

    def system_text():
        return tools_system_prompt(tools, system) if tools else system

    conversation = open_conversation(verified, engine, system_text())
    interactive = sys.stdin.isatty()
    if interactive:
        say(f"chatting with {bundle} (context {verified.context_length} tokens); {HELP}")
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        command, _, argument = line.partition(" ")
        try:
            if command == "/quit":
                break
            if command == "/reset":
                conversation.reset(system_text())
                say("(conversation reset)")
                continue
            if command == "/system":
                system = argument or None
                conversation.reset(system_text())
                say("(system prompt set; conversation reset)")
                continue
            if command == "/tools":
                tools = [] if argument.strip() in ("", "off") else read_tools(read_json_file(Path(argument.strip()), "tools file"))
                conversation.reset(system_text())
                say(f"({len(tools)} tools; conversation reset)")
                continue
            if command == "/tool":
                conversation.add("tool", argument)
            elif command.startswith("/") and command[1:].isalpha():
                say(f"unknown command {command}; {HELP}")
                continue
            else:
                conversation.add("user", line)
            reply = conversation.reply(max_new_tokens=max_new_tokens, temperature=temperature,
                                       on_text=lambda piece: click.echo(piece, nl=False))
        except ConfigError as exc:  # a bad /tools file or message: the session goes on
            say(f"error: {exc}")
            continue
        except LlamaMobileError:
            raise
        click.echo("")
        sys.stdout.flush()
        if tools:
            parsed = parse_reply(reply.text, tools)
            if parsed.calls:
                click.echo("tool_calls: " + json.dumps([{"name": c.name, "arguments": c.arguments} for c in parsed.calls],
                                                       ensure_ascii=False))
            elif parsed.error:
                say(f"(not a valid tool call, kept as text: {parsed.error})")
        notes = [f"prefill {reply.prompt_tokens} tokens", f"first token {reply.time_to_first_token_ms:.0f} ms",
                 f"{reply.generated_tokens} tokens at {reply.decode_tokens_per_s:.1f} tok/s",
                 f"cache {reply.position}/{verified.context_length}"]
        if reply.reprefilled and sum(m["role"] == "assistant" for m in conversation.window) > 1:
            notes.append("cache rebuilt")
        if reply.dropped_messages:
            notes.append(f"{reply.dropped_messages} oldest messages dropped")
        say("(" + ", ".join(notes) + ")")
