"""Stream framing that the real model rarely shows: keep-alive pings, failures mid-stream.

These drive the real stream code with a ``Generation`` fed by hand; the model is not
involved, which is the point: its timing and failures are what is being staged.
"""

from __future__ import annotations

import asyncio
import json

from shimmy.api.openai.chat import ChatJob, _stream
from shimmy.api.streams import with_pings
from shimmy.chat.request import ChatRequest
from shimmy.chat.run import ChatRun
from shimmy.chat.syntax import OutputParser
from shimmy.engine.scheduler import Generation, Sampling
from shimmy.http.sse import SSE_PING


class _Named:
    name = "m"


def _events(raw: list[bytes]) -> list:
    out = []
    for chunk in raw:
        for event in chunk.decode().split("\n\n"):
            if event.startswith("data: "):
                data = event[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
            elif event:
                out.append(event)
    return out


async def _collect(chunks) -> list[bytes]:
    return [chunk async for chunk in chunks]


def test_failure_after_the_stream_began_is_an_error_event() -> None:
    async def scenario() -> list:
        generation = Generation([1, 2], 10, Sampling(), [])
        run = ChatRun(_Named(), ChatRequest([]), generation, OutputParser("json", None), False)
        job = ChatJob(run, True, False, False)
        task = asyncio.ensure_future(_collect(_stream(job)))
        generation._feed("Hel", None, 1, None, None)
        generation._feed("lo", None, 2, None, None)
        await asyncio.sleep(0)
        generation._fail("llama_decode failed with status -3")
        return _events(await task)

    events = asyncio.run(scenario())
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"]["content"] for e in events[1:3]] == ["Hel", "lo"]
    error = events[3]["error"]
    assert error["type"] == "server_error" and "status -3" in error["message"]
    assert events[4] == "[DONE]" and len(events) == 5


def test_pings_keep_a_long_prompt_alive() -> None:
    async def scenario() -> list[bytes]:
        generation = Generation([1], 5, Sampling(), [])

        async def slow():
            await asyncio.sleep(0.35)  # a long prompt being read
            generation._feed("x", "stop", 1, None, None)
            yield b"data: first\n\n"

        return await _collect(with_pings(slow(), generation, lambda: SSE_PING, interval=0.1))

    chunks = asyncio.run(scenario())
    assert chunks[-1] == b"data: first\n\n"
    assert 2 <= chunks.count(b": ping\n\n") <= 4
