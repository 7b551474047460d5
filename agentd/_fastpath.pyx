# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled implementation of :mod:`agentd.fastpath`.

Same names, signatures and behaviour as ``agentd/_fastpath_py.py``; the
test-suite runs both and compares them on generated and hostile input.
"""

from libc.stdint cimport uint16_t, uint8_t

__all__ = ("SLOT_COUNT", "key_slot")

SLOT_COUNT = 16384

# CRC-16/XMODEM (poly 0x1021, init 0), the table Redis uses in src/crc16.c.
cdef uint16_t _CRC16_TABLE[256]


cdef void _fill_table() noexcept:
    cdef int i, bit
    cdef uint16_t crc
    for i in range(256):
        crc = <uint16_t>(i << 8)
        for bit in range(8):
            if crc & 0x8000:
                crc = <uint16_t>((crc << 1) ^ 0x1021)
            else:
                crc = <uint16_t>(crc << 1)
        _CRC16_TABLE[i] = crc


_fill_table()


cdef inline uint16_t _crc16(const uint8_t* buf, Py_ssize_t n) noexcept nogil:
    cdef uint16_t crc = 0
    cdef Py_ssize_t i
    for i in range(n):
        crc = <uint16_t>((crc << 8) ^ _CRC16_TABLE[((crc >> 8) ^ buf[i]) & 0xFF])
    return crc


cdef inline int _slot_of(const uint8_t* buf, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t start = -1, end, i
    for i in range(n):
        if buf[i] == b'{':
            start = i
            break
    if start != -1:
        for end in range(start + 1, n):
            if buf[end] == b'}':
                if end > start + 1:
                    return _crc16(buf + start + 1, end - start - 1) & 0x3FFF
                break
    return _crc16(buf, n) & 0x3FFF


def key_slot(key):
    """Return the Redis Cluster hash slot of ``key`` (CRC16-XMODEM mod 16384).

    Honours hash tags exactly as Redis does: when the key holds a ``{`` followed
    later by a ``}`` with at least one byte between them, only the bytes between
    the first ``{`` and the first ``}`` after it are hashed. A ``str`` is hashed
    as its UTF-8 encoding (surrogates are passed through, never an error).
    """
    cdef const uint8_t[::1] view
    cdef bytes data
    if isinstance(key, str):
        data = (<str>key).encode("utf-8", "surrogatepass")
        return _slot_of(<const uint8_t*><char*>data, len(data))
    if isinstance(key, bytes):
        return _slot_of(<const uint8_t*><char*>(<bytes>key), len(<bytes>key))
    if isinstance(key, (bytearray, memoryview)):
        data = bytes(key)
        return _slot_of(<const uint8_t*><char*>data, len(data))
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
