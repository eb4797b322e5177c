"""Ollama: embeddings (`POST /api/embed`, the legacy `POST /api/embeddings`) and what clients
call before embedding: `GET /` and `HEAD /` (liveness), `GET /api/version`, `GET /api/tags`,
`POST /api/show`, `GET /api/ps`.

As in Ollama, an empty input is not an error: it answers no embeddings (clients send it to
preload a model). Ollama's clients send the model name they were configured with, with or
without its `:latest` tag; an unknown one answers Ollama's 404 `{"error": "model 'x' not
found"}`, followed by the names this daemon would accept. Shapes follow Ollama's `api/types.go`;
Obsidian Smart Connections reads `*.embedding_length` and `*.context_length` from `/api/show`'s
`model_info`, Roo Code looks its model up in `/api/tags` by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

from aiohttp import web

from localrank.declare import OneOf, Rule, arg
from localrank.engine.names import describe_names
from localrank.engine.types import ModelInfo
from localrank.errors import NotFound
from localrank.serve.api import Dialect, Operation, route
from localrank.serve.dialects.listing import ModelFacts, model_facts
from localrank.serve.dialects.shared import (
    MINILM,
    VEC,
    Dimensions,
    InputType,
    Instruction,
    Model,
    Truncate,
    instruction_for_queries,
    query_mode,
    serves,
)
from localrank.serve.state import model_service

# The Ollama API level these routes follow (what `GET /api/version` reports): /api/embed with
# `truncate` and `dimensions`, `capabilities` in /api/tags and /api/show.
OLLAMA_VERSION = "0.12.0"
LIVENESS = "Ollama is running"
# Ollama keeps a model loaded until its keep_alive runs out; this one never unloads.
_NEVER = datetime(2318, 1, 1, tzinfo=timezone.utc)


def not_found(name: str, info: ModelInfo) -> NotFound:
    return NotFound(
        f"model {name!r} not found; this server has {describe_names(info.names)}", param="model"
    )


def check_ollama_model(name: str | None, info: ModelInfo) -> None:
    """The served model, named with or without Ollama's implicit `:latest` tag, or no model."""
    if name is None or serves(info, name) or serves(info, name.removesuffix(":latest")):
        return
    raise not_found(name, info)


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    model: Model | None = None
    input: str | list[str] | None = arg("Text or texts; empty answers no embeddings.", default=None)
    truncate: Truncate = True
    dimensions: Dimensions | None = None
    input_type: InputType | None = None
    instruction: Instruction | None = None
    options: dict[str, Any] | None = arg("Accepted, not used.", default=None, unused=True)
    keep_alive: str | float | None = arg(
        "Accepted, not used (the model stays loaded).", default=None, unused=True
    )
    RULES: ClassVar[tuple[Rule, ...]] = (instruction_for_queries("input_type"),)


@dataclass(frozen=True, kw_only=True)
class EmbeddingsRequest:
    model: Model | None = None
    prompt: str = arg("The text; empty answers an empty embedding.", default="")
    truncate: Truncate = True
    input_type: InputType | None = None
    instruction: Instruction | None = None
    options: dict[str, Any] | None = arg("Accepted, not used.", default=None, unused=True)
    keep_alive: str | float | None = arg(
        "Accepted, not used (the model stays loaded).", default=None, unused=True
    )
    RULES: ClassVar[tuple[Rule, ...]] = (instruction_for_queries("input_type"),)


@dataclass(frozen=True, kw_only=True)
class ShowRequest:
    model: Model | None = arg("Any name of the served model.", default=None)
    name: str | None = arg("Ollama's older spelling of model.", default=None)
    verbose: bool | None = arg("Accepted, not used.", default=None, unused=True)
    RULES: ClassVar[tuple[Rule, ...]] = (
        OneOf(("model", "name"), nonempty=True, message="model is required"),
    )


def _inputs(raw: str | list[str] | None) -> list[str]:
    """As in Ollama, no input (or an empty one) is no texts: clients send it to preload."""
    if not raw:
        return []
    return [raw] if isinstance(raw, str) else raw


async def embed(request: web.Request, req: EmbedRequest) -> web.Response:
    started = time.perf_counter_ns()
    svc = model_service(request)
    check_ollama_model(req.model, svc.info)
    inputs = _inputs(req.input)
    query, instruction = query_mode(req.input_type, req.instruction)
    embeddings: list[list[float]] = []
    tokens = 0
    if inputs:
        result = await svc.embed(
            inputs,
            query=query,
            instruction=instruction,
            dimensions=req.dimensions,
            truncate=req.truncate,
        )
        embeddings, tokens = result.vectors.tolist(), result.prompt_tokens
    return web.json_response(
        {
            "model": svc.info.display_name,
            "embeddings": embeddings,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
    )


async def embeddings(request: web.Request, req: EmbeddingsRequest) -> web.Response:
    """Legacy `{"model", "prompt"}` -> `{"embedding": [...]}` (empty for an empty prompt)."""
    svc = model_service(request)
    check_ollama_model(req.model, svc.info)
    query, instruction = query_mode(req.input_type, req.instruction)
    if not req.prompt:
        return web.json_response({"embedding": []})
    result = await svc.embed(
        [req.prompt], query=query, instruction=instruction, truncate=req.truncate
    )
    return web.json_response({"embedding": result.vectors[0].tolist()})


async def liveness(request: web.Request) -> web.Response:
    """What Ollama answers on its root (clients probe it before anything else)."""
    return web.Response(text=LIVENESS, content_type="text/plain")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION})


def _details(info: ModelInfo, facts: ModelFacts) -> dict[str, Any]:
    family = info.recipe.family
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": facts.parameter_size,
        "quantization_level": info.backend.dtype.upper().replace("FLOAT", "F"),
    }


async def tags(request: web.Request) -> web.Response:
    """Every name of the served model, each as a model (clients pick theirs by name)."""
    info = model_service(request).info
    facts = await model_facts(info)
    details = _details(info, facts)
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": facts.modified.isoformat(),
            "size": facts.size_bytes,
            "digest": facts.digest,
            "details": details,
            "capabilities": ["embedding"],
        }
        for name in info.names
    ]
    return web.json_response({"models": models})


async def show(request: web.Request, req: ShowRequest) -> web.Response:
    """The model's details: `model_info` carries `<family>.embedding_length` (the vector size)
    and `<family>.context_length` (the served token limit)."""
    svc = model_service(request)
    check_ollama_model(req.model or req.name, svc.info)
    info = svc.info
    facts = await model_facts(info)
    family = info.recipe.family
    return web.json_response(
        {
            "license": "",
            "modelfile": f"# served by localrank\nFROM {info.path}\n",
            "parameters": f"num_ctx {info.backend.max_tokens}",
            "template": "",
            "details": _details(info, facts),
            "model_info": {
                "general.architecture": family,
                "general.basename": info.model_id.rsplit("/", 1)[-1],
                "general.parameter_count": facts.parameters,
                f"{family}.embedding_length": info.backend.dim,
                f"{family}.context_length": info.backend.max_tokens,
                f"{family}.pooling_type": info.backend.pooling,
            },
            "capabilities": ["embedding"],
            "modified_at": facts.modified.isoformat(),
        }
    )


async def ps(request: web.Request) -> web.Response:
    """The loaded model (always exactly one, loaded for good)."""
    info = model_service(request).info
    facts = await model_facts(info)
    name = info.names[0] if info.names else info.model_id
    return web.json_response(
        {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "size": facts.size_bytes,
                    "digest": facts.digest,
                    "details": _details(info, facts),
                    "expires_at": _NEVER.isoformat(),
                    "size_vram": 0 if info.backend.device == "cpu" else facts.size_bytes,
                    "context_length": info.backend.max_tokens,
                }
            ]
        }
    )


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    return {"error": message}


_DETAILS = {
    "parent_model": "",
    "format": "safetensors",
    "family": "bert",
    "families": ["bert"],
    "parameter_size": "22.71M",
    "quantization_level": "F32",
}
_TAG = {
    "name": "all-minilm-l6-v2",
    "model": "all-minilm-l6-v2",
    "modified_at": "2026-11-22T10:00:00+00:00",
    "size": 90868376,
    "digest": "9a3f...",
    "details": _DETAILS,
    "capabilities": ["embedding"],
}

DIALECT = Dialect(
    "ollama",
    error_body,
    body_types=frozenset({"application/json", "text/plain", "application/x-www-form-urlencoded"}),
    routes=(
        route(
            "GET",
            "/",
            liveness,
            Operation(
                'Ollama liveness: 200 "Ollama is running" (also HEAD), model loaded or not.',
                content_type="text/plain",
                response=LIVENESS,
            ),
        ),
        route(
            "GET",
            "/api/version",
            version,
            Operation(
                "The Ollama API version these routes follow.",
                response={"version": OLLAMA_VERSION},
            ),
        ),
        route(
            "GET",
            "/api/tags",
            tags,
            Operation(
                "Ollama's model list: every name the served model answers to, one entry each.",
                response={"models": [_TAG]},
            ),
        ),
        route(
            "POST",
            "/api/show",
            show,
            Operation(
                "Ollama model details: model_info carries <family>.embedding_length and "
                "<family>.context_length; 404 for a model not served here.",
                example={"model": "all-minilm-l6-v2"},
                response={
                    "details": _DETAILS,
                    "model_info": {
                        "general.architecture": "bert",
                        "bert.embedding_length": 384,
                        "bert.context_length": 256,
                    },
                    "capabilities": ["embedding"],
                },
            ),
        ),
        route(
            "GET",
            "/api/ps",
            ps,
            Operation(
                "Ollama's loaded models: the served one, which never unloads.",
                response={
                    "models": [
                        {
                            **{k: _TAG[k] for k in ("name", "model", "size", "digest", "details")},
                            "expires_at": _NEVER.isoformat(),
                            "size_vram": 0,
                            "context_length": 256,
                        }
                    ]
                },
            ),
        ),
        route(
            "POST",
            "/api/embed",
            embed,
            Operation(
                "Ollama embed (what ollama.Client.embed calls).",
                example={"model": "all-minilm-l6-v2", "input": ["hello world"]},
                response={
                    "model": MINILM,
                    "embeddings": [VEC],
                    "total_duration": 4200000,
                    "load_duration": 0,
                    "prompt_eval_count": 4,
                },
            ),
        ),
        route(
            "POST",
            "/api/embeddings",
            embeddings,
            Operation(
                "Ollama's legacy embeddings: one prompt, one vector.",
                example={"model": "all-minilm-l6-v2", "prompt": "hello world"},
                response={"embedding": VEC},
            ),
        ),
    ),
)
