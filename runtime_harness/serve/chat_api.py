"""POST /v1/chat/completions: OpenAI's chat completions on the bundle's program, streamed (SSE) or not.

The conversation is rendered by the bundle's chat template (core.tokenizer.render_chat) with tools as Llama
3.2 takes them (runtime_harness.tools); the reply is parsed into tool_calls when tools were offered. With
--guard-chat, the shield judges the conversation before generation (input) and the reply before it is
sent (output); a violation is answered as OpenAI answers a refusal: message.refusal set, content null,
finish_reason "content_filter". A streamed reply that may be a tool call, or that the output shield must
judge first, is held back until it is complete.
"""
from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llama_mobile.core.errors import ConfigError
from llama_mobile.core.tokenizer import render_chat
from llama_mobile.runtime_harness.guard_prompt import Turn
from llama_mobile.runtime_harness.serve import schema
from llama_mobile.runtime_harness.serve.generation import Sampling
from llama_mobile.runtime_harness.serve.safety import CANNED_RESPONSE, to_turns, violation
from llama_mobile.runtime_harness.serve.schema import ApiError, ChatRequest
from llama_mobile.runtime_harness.serve.service import ClientGone, Service, api_error, disconnect_watcher, next_event
from llama_mobile.runtime_harness.tools import PYTHON_TAG, parse_reply, render_messages, with_tools

CALL_STARTS = ("[", "{", PYTHON_TAG[0])


async def chat_completions(request: Request, service: Service, body: dict):
    req = schema.parse_chat(body)
    if req.model != service.model_id:
        if req.model in service.shields:
            raise ApiError(400, f"{req.model} is a Llama Guard shield, not a chat model: use /v1/moderations or "
                           "/v1/safety/run-shield", param="model", code="model_not_chat")
        raise ApiError(404, f"the model {req.model!r} does not exist (this server has {service.model_id!r})",
                       param="model", code="model_not_found")
    try:
        history = render_messages(req.messages)
        prompt = render_chat(service.model.bundle.chat_template, render_messages(with_tools(req.messages, req.tools)))
    except ConfigError as exc:
        raise ApiError(400, "; ".join(exc.problems), param="messages") from None
    info = request.state.log = {"model": req.model, "stream": req.stream}
    watcher = disconnect_watcher(request.receive)
    try:
        turns = to_turns(history) if service.guard_input or service.guard_output else []
        if service.guard_input:
            verdict = await service.check(service.chat_shield, turns, watcher)
            info["input_shield"] = "safe" if verdict.safe else verdict.violation_type
            if not verdict.safe:
                return _refusal(req, verdict)
        sampling = Sampling(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                            stop=req.stop, logit_bias=req.logit_bias)
        model = service.model
        job = service.submit(service.engine, lambda job: model.generate(
            prompt, sampling, on_text=lambda text: job.emit("text", text), should_stop=job.should_stop,
            on_prompt=lambda n: job.emit("prompt", n)))
        kind, value = await next_event(job, watcher)  # the prompt fits, or the request fails here
        if kind == "error":
            raise api_error(value)
        info["queue_ms"] = round(job.queue_ms, 1)
        if not req.stream:
            return await _whole(req, service, job, watcher, turns, info)
    except ClientGone:
        info["disconnected"] = True
        return JSONResponse({}, status_code=499)
    finally:
        watcher.cancel()
    return StreamingResponse(_stream(req, service, job, turns, info), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _refusal(req: ChatRequest, verdict) -> Response:
    cid = schema.completion_id()
    if not req.stream:
        body = schema.completion(cid, req.model, {"refusal": CANNED_RESPONSE}, "content_filter", schema.usage(0, 0))
        body["violation"] = violation(verdict)
        return JSONResponse(body)
    created = int(time.time())
    events = [schema.chunk(cid, req.model, created, {"role": "assistant", "refusal": CANNED_RESPONSE}),
              schema.chunk(cid, req.model, created, {}, "content_filter")]
    if req.include_usage:
        events.append(schema.chunk(cid, req.model, created, None, use=schema.usage(0, 0)))
    return StreamingResponse(iter([*(_sse(e) for e in events), "data: [DONE]\n\n"]), media_type="text/event-stream")


async def _whole(req, service, job, watcher, turns, info) -> JSONResponse:
    while True:
        kind, value = await next_event(job, watcher)
        if kind == "error":
            raise api_error(value)
        if kind == "done":
            break
    output = value
    if output.finish == "cancelled":
        raise ApiError(503, "the server is shutting down; the reply was cut", code="shutting_down")
    _account(info, output)
    message, finish, refused = await _final(req, service, output, turns, watcher, info)
    info["finish_reason"] = finish
    body = schema.completion(schema.completion_id(), req.model, message, finish,
                             schema.usage(output.prompt_tokens, output.completion_tokens, output.cached_tokens))
    if refused:
        body["violation"] = refused
    return JSONResponse(body)


async def _final(req, service, output, turns, watcher, info) -> tuple[dict, str, dict | None]:
    """The reply as a message: tool calls when it parses as calls, the refusal when the output shield says so."""
    parsed = parse_reply(output.text, req.tools) if req.tools else None
    if service.guard_output:  # the conversation's turns end on the user's side: the reply comes next
        said = Turn("assistant", output.text.removeprefix(PYTHON_TAG))
        verdict = await service.check(service.chat_shield, [*turns, said], watcher)
        info["output_shield"] = "safe" if verdict.safe else verdict.violation_type
        if not verdict.safe:
            return {"refusal": CANNED_RESPONSE}, "content_filter", violation(verdict)
    if parsed is not None and parsed.calls:
        return {"tool_calls": schema.tool_call_items(parsed.calls)}, "tool_calls", None
    return {"content": output.text}, output.finish, None


def _account(info: dict, output) -> None:
    info.update(prompt_tokens=output.prompt_tokens, completion_tokens=output.completion_tokens,
                cached_tokens=output.cached_tokens, ttft_ms=round(output.time_to_first_token_ms, 1))


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _stream(req: ChatRequest, service: Service, job, turns, info):
    cid, created = schema.completion_id(), int(time.time())
    hold_all = service.guard_output  # the shield judges the whole reply before any of it is sent
    held, undecided = [], bool(req.tools)  # with tools: hold while the reply may still be a call
    kind = None
    try:
        yield _sse(schema.chunk(cid, req.model, created, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await job.events.get()
            if kind == "error":
                error = api_error(value)
                yield _sse(error.body())
                yield "data: [DONE]\n\n"
                info["error"] = error.code
                return
            if kind == "done":
                break
            if hold_all:
                held.append(value)
                continue
            if undecided:
                held.append(value)
                start = "".join(held).lstrip()
                if not start:
                    continue
                undecided = False
                if start.startswith(CALL_STARTS):
                    hold_all = True
                    continue
                value, held = "".join(held), []
            yield _sse(schema.chunk(cid, req.model, created, {"content": value}))
        output = value
        if output.finish == "cancelled":
            yield _sse(ApiError(503, "the server is shutting down; the reply was cut", code="shutting_down").body())
            yield "data: [DONE]\n\n"
            return
        _account(info, output)
        if held or service.guard_output or req.tools:
            message, finish, _ = await _final(req, service, output, turns, None, info)
            if message.get("tool_calls"):
                calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
                yield _sse(schema.chunk(cid, req.model, created, {"tool_calls": calls}))
            elif message.get("refusal"):
                yield _sse(schema.chunk(cid, req.model, created, {"refusal": message["refusal"]}))
            elif held:
                yield _sse(schema.chunk(cid, req.model, created, {"content": "".join(held)}))
        else:
            finish = output.finish
        info["finish_reason"] = finish
        yield _sse(schema.chunk(cid, req.model, created, {}, finish))
        if req.include_usage:
            use = schema.usage(output.prompt_tokens, output.completion_tokens, output.cached_tokens)
            yield _sse(schema.chunk(cid, req.model, created, None, use=use))
        yield "data: [DONE]\n\n"
    except ApiError as exc:  # the output shield could not run
        yield _sse(exc.body())
        yield "data: [DONE]\n\n"
    finally:  # the client went away (the response task is cancelled) or the stream ended
        job.cancel()
        if kind != "done" and "error" not in info:
            info["disconnected"] = True
