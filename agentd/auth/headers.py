"""OpenAI's ``x-ratelimit-*`` headers: where the per-minute limits stand after an
admission."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..store import Verdict

__all__ = (
    "REQUESTS_HEADERS",
    "TOKENS_HEADERS",
    "Rendered",
    "duration",
    "header_lines",
    "ratelimit_headers",
)


def duration(ms: int) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1s``, ``6m0s``, ``1.5s``."""
    ms = max(0, ms)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{seconds}" if minutes else seconds


# (limit, remaining, reset) of each.
REQUESTS_HEADERS, TOKENS_HEADERS = (
    (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
)


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the per-minute limits that apply."""
    headers: dict[str, str] = {}
    for names, window in (
        (REQUESTS_HEADERS, verdict.requests),
        (TOKENS_HEADERS, verdict.tokens),
    ):
        if window is not None:
            limit, remaining, reset = names
            headers[limit] = str(window.limit)
            headers[remaining] = str(window.remaining)
            headers[reset] = duration(window.reset_ms)
    return headers


class Rendered(Mapping[str, str]):
    """The headers of a request admitted on its caller's allowance, kept as the bytes of
    their lines: ``before`` and ``after`` are the allowance's (made when it is), and only
    the requests' remaining count (``remaining``; not written when ``before`` is empty:
    no requests limit) is the request's own. The front writes :meth:`lines`; the mapping
    is read from them when asked."""

    __slots__ = ("_found", "after", "before", "remaining")

    def __init__(self, before: bytes, remaining: int, after: bytes) -> None:
        self.before, self.remaining, self.after = before, remaining, after
        self._found: dict[str, str] | None = None

    def lines(self) -> bytes:
        """The header lines, each ending in CRLF."""
        if not self.before:
            return self.after
        return self.before + b"%d" % self.remaining + self.after

    def __bool__(self) -> bool:  # without reading the lines
        return bool(self.before or self.after)

    def _dict(self) -> dict[str, str]:
        found = self._found
        if found is None:
            pairs = (line.split(": ", 1) for line in self.lines().decode().split("\r\n") if line)
            found = self._found = {name: value for name, value in pairs}
        return found

    def __getitem__(self, name: str) -> str:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


def header_lines(headers: Mapping[str, str]) -> bytes:
    """``headers`` as the lines of an HTTP head, each ending in CRLF."""
    if type(headers) is Rendered:
        return headers.lines()
    return "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode()
