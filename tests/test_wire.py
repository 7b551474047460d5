"""The wire formats' exact bytes (agentd/wire/): every kind of server-sent event frame
agentd writes, the chat completion and its chunks, and the wire package's place below
the layers that use it."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from agentd.errors import Overloaded
from agentd.server.events import session_frame
from agentd.server.http import PING
from agentd.store import Event
from agentd.wire import sse
from agentd.wire.chat import (
    DONE,
    Chunks,
    completion,
    completion_id,
    error_frame,
    full_usage,
    model_object,
)
from agentd.wire.responses import event_frame

WIRE = Path(__file__).parent.parent / "agentd" / "wire"


# -- server-sent event frames -----------------------------------------------------------


def test_a_data_frame_is_one_data_line_and_a_blank_line() -> None:
    assert sse.frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


def test_an_event_frame_names_the_event_before_its_data() -> None:
    assert sse.frame(b"{}", "typing") == b"event: typing\ndata: {}\n\n"


def test_an_id_comes_before_the_event_name() -> None:
    assert sse.frame(b"{}", "messages", 42) == b"id: 42\nevent: messages\ndata: {}\n\n"


def test_a_comment_is_a_colon_line() -> None:
    assert sse.comment(b"watching s-1") == b": watching s-1\n\n"
    assert PING == b": ping\n\n"


def test_session_frames_carry_the_last_seq_as_their_id() -> None:
    messages = ({"seq": 6, "role": "user"}, {"seq": 7, "role": "assistant"})
    assert session_frame(Event("s-1", "messages", messages)) == (
        b'id: 7\nevent: messages\ndata: {"session_id":"s-1","messages":'
        b'[{"seq":6,"role":"user"},{"seq":7,"role":"assistant"}]}\n\n'
    )
    assert session_frame(Event("s-1", "typing", data={"who": "ann"})) == (
        b'event: typing\ndata: {"session_id":"s-1","data":{"who":"ann"}}\n\n'
    )
    assert session_frame(Event("s-1", "deleted", data={})) == (
        b'event: deleted\ndata: {"session_id":"s-1","data":{}}\n\n'
    )


def test_responses_events_are_framed_by_their_type() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "hi"}
    assert event_frame(event) == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","sequence_number":3,"delta":"hi"}\n\n'
    )


# -- chat completions -------------------------------------------------------------------


def test_completion_ids_look_like_openai_ones() -> None:
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", completion_id())
    assert completion_id() != completion_id()


def test_usage_always_has_the_three_counts() -> None:
    assert full_usage({}) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert full_usage({"prompt_tokens": 2, "completion_tokens": 3, "extra": 1}) == {
        "prompt_tokens": 2, "completion_tokens": 3, "extra": 1, "total_tokens": 5,
    }  # fmt: skip


def test_a_completion_names_its_session_only_when_stored() -> None:
    stateless = completion("chatcmpl-1", 1700000000, "echo", "hi", "stop", {})
    assert orjson.dumps(stateless) == (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"echo",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
        b'"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}'
    )
    stored = completion("chatcmpl-1", 1700000000, "echo", "hi", "length", {}, "s-1", 9)
    assert list(stored)[-2:] == ["session_id", "seq"]
    assert (stored["session_id"], stored["seq"]) == ("s-1", 9)
    assert "seq" not in completion("chatcmpl-1", 0, "echo", "hi", "stop", {}, "s-1", None)


def test_a_stream_is_framed_chunk_by_chunk() -> None:
    chunks = Chunks("chatcmpl-1", 1700000000, "echo")
    head = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
    head += b'"model":"echo","choices":'
    assert chunks.role() == (
        head + b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    )
    assert chunks.content("hi") == (
        head + b'[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    )
    assert chunks.finish("stop") == (head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    assert chunks.finish("stop", "s-1", 4) == (
        head + b'[{"index":0,"delta":{},"finish_reason":"stop"}],"session_id":"s-1","seq":4}\n\n'
    )
    assert chunks.usage({"prompt_tokens": 1, "completion_tokens": 2}) == (
        head + b'[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n'
    )


@given(st.text(), st.text(min_size=1), st.integers(min_value=0, max_value=2**40), st.text())
def test_a_content_chunk_is_the_json_of_its_object(
    cid: str, model: str, created: int, text: str
) -> None:
    """Content chunks are made from bytes kept around the text: the same bytes as the
    chunk object's JSON, whatever the id, model and text (quotes, escapes, unicode)."""
    chunks = Chunks(cid, created, model)
    for piece in (text, text[::-1], ""):
        doc = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        assert chunks.content(piece) == sse.frame(orjson.dumps(doc))


def test_an_error_in_a_stream_is_its_error_body() -> None:
    assert error_frame(Overloaded("busy")) == (
        b'data: {"error":{"message":"busy","type":"server_error","code":"overloaded"}}\n\n'
    )


def test_an_agent_is_a_model_object() -> None:
    assert orjson.dumps(model_object("echo", 1_700_000_000)) == (
        b'{"id":"echo","object":"model","created":1700000000,"owned_by":"agentd"}'
    )
