"""What a user would otherwise write: the chat endpoint with FastAPI on uvicorn.

Written the common way, not tuned: pydantic models for the request, an in-process
dict as the response cache keyed by the request's JSON, an echo "model", SSE through
``StreamingResponse``, and — when ``BENCH_REDIS_URL`` is set — sessions in Redis with
``redis.asyncio`` (read the last 20 messages, then append the turn and publish it).

    uvicorn bench.baselines.fastapi_app:app --workers 1 --no-access-log
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

CACHE_SIZE = 10_000
HISTORY = 20


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    stream: bool = False
    session_id: str | None = None


app = FastAPI()
cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
_redis_url = os.environ.get("BENCH_REDIS_URL")
redis_client: Any = None
if _redis_url:
    import redis.asyncio as aioredis

    redis_client = aioredis.from_url(_redis_url)


def _reply(request: ChatRequest) -> str:
    users = [m.content for m in request.messages if m.role == "user"]
    return users[-1] if users else ""


def _completion(request: ChatRequest, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": len(text.split()),
            "total_tokens": 3 + len(text.split()),
        },
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/sessions")
async def create_session() -> dict[str, str]:
    if redis_client is None:
        raise HTTPException(404, "sessions need BENCH_REDIS_URL")
    sid = secrets.token_hex(16)
    await redis_client.set(f"session:{sid}", json.dumps({"created": time.time()}))
    return {"id": sid}


async def _session_turn(request: ChatRequest) -> dict[str, Any]:
    key = f"session:{request.session_id}:messages"
    if not await redis_client.exists(f"session:{request.session_id}"):
        raise HTTPException(404, "no such session")
    await redis_client.lrange(key, -HISTORY, -1)  # the history a model would get
    text = _reply(request)
    user = request.messages[-1].model_dump()
    answer = {"role": "assistant", "content": text}
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.rpush(key, json.dumps(user), json.dumps(answer))
        pipe.ltrim(key, -1000, -1)
        pipe.publish(f"session:{request.session_id}:events", json.dumps(answer))
        await pipe.execute()
    return _completion(request, text)


async def _chunks(request: ChatRequest, text: str) -> AsyncIterator[str]:
    base = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
    }

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        doc = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(doc)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for word in text.split(" "):
        yield chunk({"content": word})
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"


@app.post("/v1/chat/completions", response_model=None)
async def chat(request: ChatRequest) -> dict[str, Any] | StreamingResponse:
    if request.session_id is not None and redis_client is not None:
        return await _session_turn(request)
    if request.stream:
        return StreamingResponse(_chunks(request, _reply(request)), media_type="text/event-stream")
    key = request.model_dump_json()
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    body = _completion(request, _reply(request))
    cache[key] = body
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return body
