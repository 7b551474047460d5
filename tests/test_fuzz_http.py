"""Fuzzing every HTTP endpoint of a real ``agentd serve``, in memory and on Redis.

For each route of ``agentd/server/*.py`` (``bench.fuzzgen.ENDPOINTS``), requests of
valid structure with hostile values and of hostile structure (and raw malformed HTTP
over a socket): never a 5xx, also not inside a started stream; every 4xx is
``{"error": {"message", "type", "code"}}`` with a code the source names. When a module's
examples are done, its server is checked for what they may have left behind (see
``fuzz_strategies.fuzzed_server``): a failure there shows as an error at teardown.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from agentd.config import from_dict
from agentd.server.app import create_app
from bench.fuzzconn import raw_input
from bench.fuzzgen import ENDPOINTS, http_input

from .fuzz_strategies import FUZZ, Fuzzed, check, draws, fuzzed_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["memory", "redis"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    yield from fuzzed_server(request.param, tmp_path_factory.mktemp("fuzz-http"))


@pytest.mark.parametrize("route", sorted(ENDPOINTS))
@FUZZ
@given(rnd=draws)
def test_every_request_is_answered_with_a_stable_code(
    fuzzed: Fuzzed, route: str, rnd: random.Random
) -> None:
    check(fuzzed, http_input(rnd, route, fuzzed.ctx))


@settings(FUZZ, max_examples=30)
@given(rnd=draws)
def test_malformed_http_never_gets_a_server_error(fuzzed: Fuzzed, rnd: random.Random) -> None:
    check(fuzzed, raw_input(rnd, fuzzed.ctx))


def test_every_route_of_the_app_is_fuzzed() -> None:
    """A route added to the app without an entry in ``ENDPOINTS`` would go unfuzzed."""

    def shape(method: str, template: str) -> tuple[str, str]:
        return method, re.sub(r"\{[^}/]+\}", "{}", template)

    app = create_app(from_dict({}))
    routes = {
        shape(route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    fuzzed = {shape(ep.method, ep.template) for ep in ENDPOINTS.values()}
    assert routes - fuzzed == set(), "routes with no entry in bench.fuzzgen.ENDPOINTS"
