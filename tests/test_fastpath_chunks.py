"""The chunked transfer coding's decoder (``fastpath.ChunkDecoder``), both twins: generated
bodies cut at every kind of place decode to what was encoded, the twins agree read by
read on valid and hostile input, and malformed input is refused the same way however
it is cut (RFC 9112 section 7.1, strictly: a chunk size is hex digits and nothing else)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd import _fastpath_py, fastpath

from .test_fastpath import COMPILED, IMPLS, twins

MAX_LINE = _fastpath_py.MAX_CHUNK_LINE
MAX_DIGITS = _fastpath_py.MAX_CHUNK_DIGITS


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def run(impl: ModuleType, reads: list[bytes]) -> list[Any]:
    """What a decoder did with each read: (body, done, extra), or the error, then stop."""
    decoder = impl.ChunkDecoder()
    seen: list[Any] = []
    for data in reads:
        try:
            body = decoder.feed(data)
        except _fastpath_py.ChunkError as exc:
            seen.append(("error", str(exc), exc.body))
            break
        assert type(body) is bytes
        seen.append((body, decoder.done, decoder.extra))
    return seen


def total(seen: list[Any]) -> tuple[bytes, Any]:
    """The body decoded in all, and how it ended (done/extra, or the error's message)."""
    body = b"".join(s[2] if s[0] == "error" else s[0] for s in seen)
    last = seen[-1] if seen else (b"", False, False)
    return body, (last[1] if last[0] == "error" else last[1:])


def cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


# -- generated bodies --------------------------------------------------------------------

OWS = st.sampled_from(["", " ", "\t", " \t "])
TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-!#", min_size=1, max_size=8)
EXTENSION = st.builds(
    lambda before, name, after, value: f"{before};{after}{name}{value}",
    OWS,
    TOKEN,
    OWS,
    st.sampled_from(["", "=1", '="quoted; value"', " = x"]),
)


@st.composite
def chunk(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(min_size=1, max_size=300) | st.just(b"\r\n0\r\n\r\n"))
    digits = draw(st.sampled_from(["%x", "%X"])) % len(data)
    digits = "0" * draw(st.integers(0, MAX_DIGITS - len(digits))) + digits
    extensions = "".join(draw(st.lists(EXTENSION, max_size=3)))
    return f"{digits}{extensions}\r\n".encode() + data + b"\r\n"


@st.composite
def chunked_body(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(the encoded body with whatever follows it, the body, what follows it)."""
    chunks = draw(st.lists(chunk(), max_size=8))
    body = b"".join(c.split(b"\r\n", 1)[1][:-2] for c in chunks)
    last = "0" * draw(st.integers(1, MAX_DIGITS)) + "".join(draw(st.lists(EXTENSION, max_size=2)))
    trailers = draw(st.lists(st.sampled_from(["X-Sum: 1", "Expires: never", "a:"]), max_size=3))
    after = draw(st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\n", b"\r\n", b"x"]))
    raw = b"".join(chunks) + "".join(f"{x}\r\n" for x in [last, *trailers, ""]).encode()
    return raw + after, body, after


@settings(max_examples=400)
@given(chunked_body(), st.lists(st.integers(0, 4000), max_size=12))
def test_any_cut_of_a_chunked_body_decodes_to_the_body(
    encoded: tuple[bytes, bytes, bytes], cuts: list[int]
) -> None:
    raw, body, after = encoded
    for impl in IMPLS.values():
        seen = run(impl, cut(raw, cuts))
        assert total(seen) == (body, (True, bool(after)))
        ends = [s[1] for s in seen]
        assert ends == sorted(ends)  # done, once true, stays true


@twins
@settings(max_examples=400)
@given(chunked_body(), st.lists(st.integers(0, 4000), max_size=12))
def test_the_twins_agree_read_by_read(encoded: tuple[bytes, bytes, bytes], cuts: list[int]) -> None:
    reads = cut(encoded[0], cuts)
    assert run(COMPILED, reads) == run(_fastpath_py, reads)


def damaged(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for where, kind, byte in edits:
        at = where % (len(raw) + 1)
        if kind == 0:
            raw = raw[:at] + byte + raw[at:]  # a byte more
        elif kind == 1:
            raw = raw[:at] + raw[at + 1 :]  # a byte less
        else:
            raw = raw[:at] + byte + raw[at + 1 :]  # a byte changed
    return raw


EDITS = st.lists(
    st.tuples(st.integers(0, 4000), st.integers(0, 2), st.sampled_from(list(b"\r\n 0aFx;+_-\t\0"))),
    min_size=1,
    max_size=3,
).map(lambda edits: [(w, k, bytes([b])) for w, k, b in edits])


@settings(max_examples=500)
@given(chunked_body(), EDITS, st.lists(st.integers(0, 4000), max_size=12))
def test_damaged_input_is_read_the_same_however_it_is_cut(
    encoded: tuple[bytes, bytes, bytes], edits: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    raw = damaged(encoded[0], edits)
    whole = [run(impl, [raw]) for impl in IMPLS.values()]
    pieces = [run(impl, cut(raw, cuts)) for impl in IMPLS.values()]
    assert all(w == whole[0] for w in whole)  # the twins agree
    assert all(p == pieces[0] for p in pieces)
    # What was decoded, and the fault or the end, do not depend on where reads end.
    assert total(pieces[0]) == total(whole[0])


# -- hostile input, one case at a time ---------------------------------------------------

BAD_SIZE = "a bad chunk size"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\r\n", BAD_SIZE),
        (b";ext\r\n", BAD_SIZE),
        (b"zz\r\nhello\r\n", BAD_SIZE),
        (b"0x5\r\nhello\r\n", BAD_SIZE),
        (b"1_0\r\n", BAD_SIZE),
        (b"+5\r\nhello\r\n", BAD_SIZE),
        (b"-5\r\n", BAD_SIZE),
        (b" 5\r\nhello\r\n", BAD_SIZE),
        (b"5 \r\nhello\r\n", BAD_SIZE),  # whitespace only before ";"
        (b"5 6\r\n", BAD_SIZE),
        (b"5\n\r\n", BAD_SIZE),
        (b"\xd9\xa5\r\n", BAD_SIZE),  # not ASCII
        (b"1" * (MAX_DIGITS + 1) + b"\r\n", "a chunk size with too many digits"),
        (b"0" * (MAX_DIGITS + 1) + b"\r\n\r\n", "a chunk size with too many digits"),
        (b"f" * 40 + b"\r\n", "a chunk size with too many digits"),
        (b"5\r\nhelloXX", "a chunk without its CRLF"),
        (b"5\r\nhello\n\r\n", "a chunk without its CRLF"),
        (b"5\r\nhello\rX", "a chunk without its CRLF"),
        (b"5\r\nhelloX", "a chunk without its CRLF"),  # refused before the next byte
        (b"5\r\nhello world\r\n", "a chunk without its CRLF"),
        (b"5;" + b"x" * MAX_LINE + b"\r\n", "a chunk size line is too long"),
        (b"5" * (MAX_LINE + 1), "a chunk size line is too long"),  # no CRLF yet
        (b"0\r\nX: " + b"y" * MAX_LINE + b"\r\n\r\n", "a trailer line is too long"),
    ],
)
@pytest.mark.parametrize("reads", ["whole", "byte-by-byte"])
def test_malformed_input_is_refused(impl: ModuleType, raw: bytes, error: str, reads: str) -> None:
    raw = b"3\r\nabc\r\n" + raw
    seen = run(impl, [raw] if reads == "whole" else [raw[i : i + 1] for i in range(len(raw))])
    body = b"abc" + (b"hello" if raw.startswith(b"3\r\nabc\r\n5\r\nhello") else b"")
    assert total(seen) == (body, error)
    assert seen[-1][0] == "error"


def test_the_body_before_a_fault_comes_with_the_error(impl: ModuleType) -> None:
    decoder = impl.ChunkDecoder()
    with pytest.raises(fastpath.ChunkError, match=r"^a bad chunk size$") as info:
        decoder.feed(b"3\r\nabc\r\n2;x\r\nde\r\nxyz\r\n")
    assert info.value.body == b"abcde"
    assert isinstance(info.value, ValueError)
    with pytest.raises(fastpath.ChunkError, match=r"^a bad chunk size$") as again:
        decoder.feed(b"0\r\n\r\n")  # a failed decoder stays failed
    assert again.value.body == b"" and not decoder.done


@pytest.mark.parametrize(
    "line",
    [
        b"5;" + b"x" * (MAX_LINE - 2),  # the longest size line
        b"0" * (MAX_DIGITS - 1) + b"5",  # the most digits
        b"5\t ;a=1;b",
        b"5;",
    ],
)
def test_the_longest_lines_and_the_most_digits_are_taken(impl: ModuleType, line: bytes) -> None:
    raw = line + b"\r\nhello\r\n0\r\nX: " + b"y" * (MAX_LINE - 3) + b"\r\n\r\n"
    at = len(line) + 1  # between the size line's CR and LF
    for reads in ([raw], [raw[:at], raw[at:]]):
        assert total(run(impl, reads)) == (b"hello", (True, False))


def test_a_line_cut_before_its_lf_waits_at_the_limit(impl: ModuleType) -> None:
    decoder = impl.ChunkDecoder()
    line = b"5;" + b"x" * (MAX_LINE - 2)
    assert decoder.feed(line + b"\r") == b""  # MAX_LINE + 1 bytes, the last a CR: not yet
    assert decoder.feed(b"\nhello\r\n0\r\n\r\n") == b"hello" and decoder.done


def test_a_huge_declared_size_takes_what_comes(impl: ModuleType) -> None:
    decoder = impl.ChunkDecoder()
    assert decoder.feed(b"f" * MAX_DIGITS + b"\r\nabc") == b"abc"
    assert decoder.feed(b"d" * 1000) == b"d" * 1000
    assert not decoder.done and not decoder.extra


def test_whole_chunks_in_one_read_are_one_body(impl: ModuleType) -> None:
    events = [b"data: {%d}\n\n" % i for i in range(6)]
    raw = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    decoder = impl.ChunkDecoder()
    assert decoder.feed(raw[:50]) + decoder.feed(raw[50:]) == b"".join(events)
    assert decoder.done and not decoder.extra


def test_a_single_chunk_read_is_returned_without_a_copy_of_its_framing(
    impl: ModuleType,
) -> None:
    decoder = impl.ChunkDecoder()
    decoder.feed(b"100\r\n")
    data = bytes(range(256))
    assert decoder.feed(data) is data  # the read is all body: passed on as it is


def test_bytes_after_the_end_are_extra(impl: ModuleType) -> None:
    decoder = impl.ChunkDecoder()
    assert decoder.feed(b"0\r\n\r\n") == b"" and decoder.done and not decoder.extra
    assert decoder.feed(b"") == b"" and not decoder.extra
    assert decoder.feed(b"HTTP/1.1") == b"" and decoder.extra


@pytest.mark.parametrize("data", [None, "0\r\n\r\n", bytearray(b"0\r\n\r\n"), memoryview(b"0")])
def test_feed_wants_bytes(impl: ModuleType, data: object) -> None:
    with pytest.raises(TypeError, match=f"^data must be bytes, not {type(data).__name__}$"):
        impl.ChunkDecoder().feed(data)


# -- the module's surface -------------------------------------------------------------


@twins
def test_the_decoder_is_exported_like_the_rest() -> None:
    expected = "python" if fastpath.NO_EXTENSIONS else "cython"
    assert fastpath.ChunkDecoder is IMPLS[expected].ChunkDecoder
    assert COMPILED.ChunkError is fastpath.ChunkError is _fastpath_py.ChunkError
    for name in ("feed", "done", "extra"):
        compiled_doc = getattr(COMPILED.ChunkDecoder, name).__doc__
        assert compiled_doc == getattr(_fastpath_py.ChunkDecoder, name).__doc__, name
