"""The ASGI app (Starlette): OpenAI's /v1/models, /v1/chat/completions and /v1/moderations, Llama Stack's
/v1/shields and /v1/safety/run-shield, and /health. Every error is one JSON body in OpenAI's error shape.

The OpenAI routes are also mounted under /v1/openai/v1, where Llama Stack clients before 0.2.13 look for
them. A model entry carries both OpenAI's fields (id, object, owned_by) and Llama Stack's (identifier,
model_type, provider_id), so either client reads it.
"""
from __future__ import annotations

import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llama_mobile.runtime_harness.guard_prompt import Turn
from llama_mobile.runtime_harness.serve import safety, schema
from llama_mobile.runtime_harness.serve.chat_api import chat_completions
from llama_mobile.runtime_harness.serve.middleware import AccessLog, ApiKey
from llama_mobile.runtime_harness.serve.schema import ApiError, bad
from llama_mobile.runtime_harness.serve.service import ClientGone, Service, api_error, disconnect_watcher

log = logging.getLogger("llama_mobile.serve")
OPENAI_PREFIXES = ("/v1", "/v1/openai/v1")
OWNER = "llama-mobile"


def create_app(service: Service, *, api_key: str | None = None, json_log: bool = False, log_stream=None):
    def endpoint(handler, with_body: bool = False):
        async def run(request: Request):
            try:
                if with_body:
                    return await handler(request, service, await read_json(request, service.max_body))
                return await handler(request, service)
            except ApiError as exc:
                return error_response(exc)
            except Exception as exc:  # noqa: BLE001  every request is answered in the API's shape
                return error_response(api_error(exc))
        return run

    routes = [Route("/health", endpoint(health)), Route("/v1/health", endpoint(stack_health)),
              Route("/v1/shields", endpoint(list_shields)),
              Route("/v1/shields/{identifier:path}", endpoint(get_shield)),
              Route("/v1/safety/run-shield", endpoint(run_shield, True), methods=["POST"])]
    for prefix in OPENAI_PREFIXES:
        routes += [Route(f"{prefix}/models", endpoint(list_models)),
                   Route(f"{prefix}/models/{{model_id:path}}", endpoint(get_model)),
                   Route(f"{prefix}/chat/completions", endpoint(chat_completions, True), methods=["POST"]),
                   Route(f"{prefix}/moderations", endpoint(moderations, True), methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # uvicorn has drained the connections: the workers can end

    async def http_error(request, exc: HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    return AccessLog(ApiKey(app, api_key), json_lines=json_log, stream=log_stream)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def read_json(request: Request, limit: int) -> dict:
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_big
    except ClientDisconnect:
        raise ApiError(499, "the client went away while sending", code="cancelled") from None
    return schema.parse_json(bytes(body))


# --- models, health ------------------------------------------------------------------------------------

def model_entry(service: Service, identifier: str) -> dict:
    bundle = service.model.bundle if identifier == service.model_id else service.shields[identifier].bundle
    meta = {"model_type": "llm", "provider_id": OWNER, "provider_resource_id": identifier,
            "task": bundle.task, "context_length": bundle.context_length, "backend": bundle.backend}
    return {"id": identifier, "object": "model", "created": service.created, "owned_by": OWNER,
            "custom_metadata": meta, "identifier": identifier, "provider_id": OWNER,
            "provider_resource_id": identifier, "model_type": "llm", "type": "model",
            "metadata": {"task": bundle.task, "context_length": bundle.context_length}}


async def list_models(request: Request, service: Service):
    return JSONResponse({"object": "list", "data": [model_entry(service, i) for i in (service.model_id, *service.shields)]})


async def get_model(request: Request, service: Service):
    identifier = request.path_params["model_id"]
    if identifier != service.model_id and identifier not in service.shields:
        raise ApiError(404, f"the model {identifier!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(model_entry(service, identifier))


async def health(request: Request, service: Service):
    return JSONResponse(service.health(), status_code=503 if service.shutting_down else 200)


async def stack_health(request: Request, service: Service):
    return JSONResponse({"status": "Error" if service.shutting_down else "OK"})


# --- safety --------------------------------------------------------------------------------------------

def shield_of(service: Service, identifier, param: str) -> str:
    if not isinstance(identifier, str) or not identifier:
        raise bad(f"'{param}' must be a shield id (GET /v1/shields lists them)", param)
    if identifier not in service.shields:
        known = ", ".join(service.shields) or "none: start the server with --shield"
        raise ApiError(404, f"the shield {identifier!r} does not exist (shields: {known})", param=param,
                       code="shield_not_found")
    return identifier


async def list_shields(request: Request, service: Service):
    return JSONResponse({"data": [s.describe() for s in service.shields.values()]})


async def get_shield(request: Request, service: Service):
    identifier = shield_of(service, request.path_params["identifier"], "identifier")
    return JSONResponse(service.shields[identifier].describe())


async def run_shield(request: Request, service: Service, body: dict):
    """Llama Stack's POST /v1/safety/run-shield: {"shield_id", "messages", "params"?} -> {"violation"}."""
    identifier = shield_of(service, body.get("shield_id"), "shield_id")
    turns = safety.to_turns(body.get("messages"))
    verdict = await _judge(request, service, identifier, turns)
    request.state.log = {"shield": identifier, "verdict": "safe" if verdict.safe else verdict.violation_type}
    return JSONResponse({"violation": safety.violation(verdict)})


async def moderations(request: Request, service: Service, body: dict):
    """OpenAI's (and Llama Stack's) POST /v1/moderations: one result per input text."""
    model = body.get("model")
    identifier = shield_of(service, service.chat_shield if model is None else model, "model")
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or len(texts) > 32 or \
            not all(isinstance(t, str) and t.strip() for t in texts):
        raise bad("'input' must be a non-empty string or a list of at most 32 of them", "input")
    verdicts = [await _judge(request, service, identifier, [Turn("user", text)]) for text in texts]
    request.state.log = {"shield": identifier, "flagged": sum(not v.safe for v in verdicts)}
    return JSONResponse(safety.moderation(identifier, verdicts))


async def _judge(request: Request, service: Service, identifier: str, turns):
    watcher = disconnect_watcher(request.receive)
    try:
        return await service.check(identifier, turns, watcher)
    except ClientGone:
        raise ApiError(499, "the client went away", code="cancelled") from None
    finally:
        watcher.cancel()
