"""A local OpenAI-compatible server for tests: the real ``openai`` client talks to it over
HTTP (aiohttp), and it answers ``/v1/chat/completions`` with structured outputs, or with
scripted misbehaviour (malformed JSON, 429, 500, slow answers)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "test-model"
NEGATIVE_WORDS = ("slow", "high", "terrible", "confusing", "unhelpful")
LINE = re.compile(r"^\[(\d+)\] (.*)$")


@dataclass
class FakeOpenAI:
    """An OpenAI-compatible /v1/chat/completions endpoint with scripted misbehaviour."""

    mode: str = "valid"
    requests: int = 0
    statuses: list[int] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` is set to."""
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, schema: str, user: str) -> dict[str, Any]:
        items = [LINE.match(line) for line in user.splitlines()]
        texts = {int(m.group(1)): m.group(2) for m in items if m}
        if schema == "sentiment_batch":
            results = []
            for i, t in texts.items():
                neg = any(w in t.lower() for w in NEGATIVE_WORDS)
                results.append(
                    {
                        "id": i,
                        "label": "negative" if neg else "positive",
                        "score": -0.8 if neg else 0.7,
                        "confidence": 0.9,
                    }
                )
            return {"results": results}
        if schema == "theme_list":
            return {
                "themes": [
                    {
                        "name": "Support",
                        "description": "The support team.",
                        "keywords": ["support"],
                    },
                    {
                        "name": "Reports",
                        "description": "Reports and speed.",
                        "keywords": ["reports"],
                    },
                ]
            }
        assignments = []
        for i, t in texts.items():
            low = t.lower()
            theme = 0 if "support" in low else 1 if "report" in low else -1
            neg = any(w in low for w in NEGATIVE_WORDS)
            assignments.append(
                {
                    "id": i,
                    "theme": theme,
                    "relevance": 0.5 + (i % 5) / 10,
                    "sentiment": -0.6 if neg else 0.6,
                }
            )
        return {"assignments": assignments}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        schema = body["response_format"]["json_schema"]["name"]
        self.schemas.append(schema)
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["model"] == MODEL
        mode = self.mode
        if mode == "429_then_valid" and self.requests <= 2:
            return self._status(429, {"retry-after-ms": "20"})
        if mode == "500":
            return self._status(500)
        if mode == "slow":
            await asyncio.sleep(3)
        if mode == "malformed" or (mode == "malformed_once" and self.requests == 1):
            content = '{"results": [{"id": 0, "label": "great"'  # cut-off, invalid JSON
        else:
            content = json.dumps(self.answer(schema, body["messages"][1]["content"]))
        self.statuses.append(200)
        return web.json_response(
            {
                "id": f"chatcmpl-{self.requests}",
                "object": "chat.completion",
                "created": 0,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )

    def _status(self, code: int, headers: dict[str, str] | None = None) -> web.Response:
        self.statuses.append(code)
        return web.json_response(
            {"error": {"message": f"scripted {code}", "type": "server_error", "code": None}},
            status=code,
            headers=headers,
        )


@asynccontextmanager
async def serve_fake_openai() -> AsyncIterator[FakeOpenAI]:
    """Runs a :class:`FakeOpenAI` on a free loopback port; its base URL is ``fake.base_url``."""
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake
    finally:
        await runner.cleanup()
