"""The echo's pieces: words between single spaces are split without the regex, into the
very pieces the regex makes (``\\s*\\S+\\s*``), whatever the whitespace around them."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from agentd.backends.echo import split_words

_WORD = re.compile(r"\s*\S+\s*")
# Words and every kind of whitespace, so that single spaces between words (the quick
# path) and everything else (the regex's) both come up often.
_TEXT = st.lists(
    st.one_of(
        st.text(alphabet="ab,é\u200b", min_size=1, max_size=4),
        st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\xa0", "\u2003", "\x1c", "\x85"]),
    ),
    max_size=12,
).map("".join)


def _by_regex(text: str) -> list[str]:
    return _WORD.findall(text) or ([text] if text else [])


@given(_TEXT)
def test_echo_pieces_are_the_regex_pieces(text: str) -> None:
    assert split_words(text) == _by_regex(text)


def test_echo_pieces_of_a_sentence() -> None:
    assert split_words("hello there, how are you?") == ["hello ", "there, ", "how ", "are ",
                                                        "you?"]  # fmt: skip
    assert split_words(" hello  there ") == [" hello  ", "there "]
    assert split_words("") == [] and split_words("  ") == ["  "]
