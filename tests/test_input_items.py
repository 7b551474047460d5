"""``GET /v1/responses/{id}/input_items`` (the SDK's ``responses.input_items.list``):
a response's input as OpenAI's ``ResponseItemList``, checked strictly against the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from openai.types.responses import ResponseItemList

from .sdk_strict import strictly

INPUT = [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": [{"type": "output_text", "text": "answer"}]},
    {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
]
TEXTS = ["be brief", "first", "answer", "second"]


@pytest.fixture
async def sdk(serve: Callable[..., Awaitable[str]]) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=await serve() + "/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


async def test_input_items_of_a_response(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="echo", input=INPUT, instructions="not an item")
    raw = await sdk.responses.input_items.with_raw_response.list(response.id)
    page = strictly(ResponseItemList, raw.content)
    # Newest first by default, as OpenAI's; instructions are not input items.
    assert [item.content[0].text for item in page.data] == TEXTS[::-1]
    assert [item.role for item in page.data] == ["user", "assistant", "user", "developer"]
    assert page.data[1].type == "message" and page.data[1].content[0].type == "output_text"
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    assert page.has_more is False
    again = await sdk.responses.input_items.list(response.id)
    assert [i.id for i in again.data] == [i.id for i in page.data]  # stable ids


async def test_input_items_page_both_ways(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="echo", input=INPUT)
    for order, expected in (("asc", TEXTS), ("desc", TEXTS[::-1])):
        texts = [
            item.content[0].text  # type: ignore[union-attr]
            async for item in sdk.responses.input_items.list(response.id, limit=1, order=order)
        ]
        assert texts == expected, order
    first = await sdk.responses.input_items.list(response.id, limit=3, order="asc")
    assert first.has_more is True and len(first.data) == 3
    rest = await sdk.responses.input_items.list(
        response.id, limit=3, order="asc", after=first.data[-1].id
    )
    assert [i.content[0].text for i in rest.data] == ["second"] and rest.has_more is False


async def test_a_background_response_lists_its_input_while_queued(
    sdk: openai.AsyncOpenAI,
) -> None:
    job = await sdk.responses.create(model="echo", input="later", background=True)
    page = await sdk.responses.input_items.list(job.id, include=["message.input_image.image_url"])
    assert [i.content[0].text for i in page.data] == ["later"]


async def test_input_items_errors(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.responses.input_items.list("resp_nothing")
    assert e.value.code == "response_not_found"
    response = await sdk.responses.create(model="echo", input="x")
    base = str(sdk.base_url).rstrip("/")
    async with aiohttp.ClientSession() as http:
        for query in ("after=msg_other", "limit=0", "limit=101", "order=sideways"):
            async with http.get(f"{base}/responses/{response.id}/input_items?{query}") as r:
                assert r.status == 400, query
                assert (await r.json())["error"]["code"], query
