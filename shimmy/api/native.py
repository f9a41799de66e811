"""shimmy's own API: /api/generate, /api/models, /api/health and /ws/generate."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from shimmy.api.params import GenerateParams, generate_params
from shimmy.api.state import AppState
from shimmy.api.streams import CancellingStream
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.pool import ModelState
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import ApiError, generation_failed, server_error
from shimmy.http.router import Router
from shimmy.http.sse import SSE_DONE, TEXT_SLOT, TextEvents, sse_data
from shimmy.http.types import Request, Response, StreamResponse, WebSocket, parse_json
from shimmy.logs import attach
from shimmy.security import check_capacity
from shimmy.sysinfo import format_bytes, process_rss_bytes

log = logging.getLogger("shimmy.api")


def register(router: Router, state: AppState) -> None:
    api = NativeApi(state)
    router.add("POST", "/api/generate", api.generate)
    router.add("GET", "/api/models", api.models)
    router.add("GET", "/api/health", api.health)
    router.add_websocket("/ws/generate", api.websocket)


class NativeApi:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def generate(self, request: Request) -> Response | StreamResponse:
        params = generate_params(request.json())
        if params.prompt is None:
            return Response.json(await self._load_or_unload(params))
        model, generation = await self._start(params)
        if params.stream:
            return StreamResponse(CancellingStream(_sse_stream(generation), generation.cancel))
        text = await _collect(generation)
        return Response.json({
            "choices": [{"text": text, "index": 0, "finish_reason": generation.finish_reason}],
            "usage": _usage(generation),
        })

    async def models(self, request: Request) -> Response:
        registry, pool = self.state.registry, self.state.pool
        loaded, default = pool.loaded, registry.default()
        return Response.json({"models": [
            {
                "id": entry.name,
                "name": entry.info.name or entry.name,
                "description": _describe(entry),
                "default": default is not None and entry.name == default.name,
                "loaded": entry.name in loaded,
                **_state(pool.state(entry.name)),
                "memory_estimate": pool.memory_need(entry),
                **_slots(loaded.get(entry.name)),
                **entry.describe(),
            }
            for entry in registry.entries()
        ]})

    async def health(self, request: Request) -> Response:
        """The server's health; with ``?model=NAME``, that model's too: 503 ``loading``
        while it loads, with the share of its weights read so far (``progress``)."""
        pool = self.state.pool
        # a model whose scheduler thread died serves nothing until it is reloaded
        failed = [name for name, model in pool.loaded.items()
                  if model.scheduler is not None and not model.scheduler.alive]
        body: dict[str, Any] = {
            "status": "unhealthy" if failed else "healthy",
            "models_loaded": len(pool.loaded),
            "memory_usage": format_bytes(process_rss_bytes()),
            "models_available": len(self.state.registry.entries()),
            "loading": pool.loading,
            **({"failed_models": failed} if failed else {}),
        }
        names = parse_qs(request.query).get("model")
        if not names:
            return Response.json(body, 503 if failed else 200)
        name = self.state.registry.resolve(names[-1]).name
        state = pool.state(name)
        body.update(model=name, state=state.state)
        if state.state == "loading":
            body.update(status="loading", progress=round(state.progress or 0.0, 3))
        elif name not in failed:
            body["status"] = "healthy"
        return Response.json(body, 200 if body["status"] == "healthy" else 503)

    async def websocket(self, socket: WebSocket) -> None:
        """One JSON request per message; answers stream back on the same connection."""
        while (message := await socket.receive_text()) is not None:
            try:
                params = generate_params(_parse_json(message))
                if params.prompt is None:
                    await socket.send_text(_dumps(await self._load_or_unload(params)))
                    continue
                _, generation = await self._start(params)
                async for piece in generation:
                    await socket.send_text(_dumps({"token": piece}))
                await socket.send_text(_dumps({
                    "done": True,
                    "finish_reason": generation.finish_reason,
                    "usage": _usage(generation),
                }))
            except ApiError as exc:
                await socket.send_text(_dumps(exc.body()))
            except GenerationError as exc:
                await socket.send_text(_dumps(generation_failed(str(exc)).body()))

    async def _load_or_unload(self, params: GenerateParams) -> dict[str, Any]:
        """Ollama's generate without a prompt: load the model, or unload it (keep_alive 0)."""
        pool = self.state.pool
        name = self.state.registry.resolve(params.model).name
        if params.keep_alive == 0:
            await pool.unload(name)
            reason = "unload"
        else:
            await pool.get(name, params.keep_alive)
            reason = "load"
        return {"model": name, "done": True, "done_reason": reason, **_state(pool.state(name))}

    async def _start(self, params: GenerateParams) -> tuple[LoadedModel, Generation]:
        model = await self.state.pool.get(params.model, params.keep_alive)
        check_capacity(model)
        with self.state.pool.hold(model):  # not unloaded while its prompt is tokenized
            # a long prompt takes a while to tokenize: not on the event loop
            tokens = await asyncio.to_thread(model.tokenize, params.prompt)
            check_capacity(model)  # again: others came in while it tokenized
            generation = model.generate(tokens, params.max_tokens, params.sampling,
                                        params.stop, params.ignore_eos)
        attach(model.name, generation)
        return model, generation


async def _collect(generation: Generation) -> str:
    try:
        return await generation.text()
    except GenerationError as exc:
        raise generation_failed(str(exc)) from None


async def _sse_stream(generation: Generation) -> AsyncIterator[bytes]:
    pieces = TextEvents({"choices": [{"text": TEXT_SLOT, "index": 0}]})
    try:
        async for piece in generation:
            yield pieces.event(piece)
        yield sse_data({
            "choices": [{"text": "", "index": 0, "finish_reason": generation.finish_reason}],
            "usage": _usage(generation),
        })
    except GenerationError as exc:
        yield sse_data(generation_failed(str(exc)).body())
    except Exception as exc:  # the stream has begun: report in band, never hang the client
        log.exception("stream failed")
        yield sse_data(server_error(str(exc)).body())
    yield SSE_DONE


def _state(state: ModelState) -> dict[str, Any]:
    """``state``, and for a loaded model ``expires_at`` (None: it stays until shutdown)."""
    if state.state == "loading":
        return {"state": state.state, "progress": round(state.progress or 0.0, 3)}
    if state.state != "loaded":
        return {"state": state.state}
    return {"state": state.state, "expires_at": _iso(state.expires_at)}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _slots(model: LoadedModel | None) -> dict:
    if model is None or model.scheduler is None:
        return {}
    scheduler = model.scheduler
    return {"slots": {"total": model.engine.n_slots, "busy": scheduler.n_active,
                      "queued": scheduler.n_queued}, "context_length": model.n_ctx}


def _usage(generation: Generation) -> dict[str, int]:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _describe(entry) -> str:
    info = entry.info
    parts = [info.architecture or "unknown architecture"]
    if info.parameters:
        parts.append(f"{info.parameters / 1e6:.0f}M parameters")
    if info.quantization:
        parts.append(info.quantization)
    if info.context_length:
        parts.append(f"{info.context_length} context")
    return ", ".join(parts) + f" ({entry.source})"


def _parse_json(text: str):
    return parse_json(text, "message")


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
