"""Pure-Python implementation of :mod:`agentd.fastpath`.

It mirrors ``agentd/_fastpath.pyx`` name for name and behaviour for behaviour;
``agentd.fastpath`` picks the compiled module when it imports. Keep the two in
step: the test-suite runs every function on both and compares the results.
"""

from __future__ import annotations

from binascii import crc_hqx

__all__ = ("SLOT_COUNT", "key_slot")

SLOT_COUNT = 16384


def key_slot(key: str | bytes) -> int:
    """Return the Redis Cluster hash slot of ``key`` (CRC16-XMODEM mod 16384).

    Honours hash tags exactly as Redis does: when the key holds a ``{`` followed
    later by a ``}`` with at least one byte between them, only the bytes between
    the first ``{`` and the first ``}`` after it are hashed. A ``str`` is hashed
    as its UTF-8 encoding (surrogates are passed through, never an error).
    """
    if isinstance(key, str):
        data = key.encode("utf-8", "surrogatepass")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
    else:
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # binascii.crc_hqx is CRC-16/XMODEM when seeded with 0 (what Redis uses).
    return crc_hqx(data, 0) & (SLOT_COUNT - 1)
