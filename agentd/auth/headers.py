"""OpenAI's ``x-ratelimit-*`` headers: where the per-minute limits stand after an
admission."""

from __future__ import annotations

from ..store import Verdict

__all__ = ("REQUESTS_HEADERS", "TOKENS_HEADERS", "duration", "ratelimit_headers")


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
