# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled implementation of :mod:`agentd.fastpath`.

Same names, signatures and behaviour as ``agentd/_fastpath_py.py``; the
test-suite runs both and compares them on generated and hostile input.

The chat tables, ``ChatBody`` and ``ChunkError`` are the twin's own objects, imported
from it, so they exist once. Where C code walks Python containers through borrowed
references, a comment says why no Python code (which could mutate them) can run meanwhile.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_READ
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from libc.math cimport floor, isfinite, isnan
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

import hashlib

import orjson

from agentd import _fastpath_py
from agentd._fastpath_py import (
    CACHE_KEY_MAX_DEPTH,
    CHAT_IGNORED_FIELDS,
    CHAT_LOCAL_FIELDS,
    CHAT_MESSAGE_FIELDS,
    CHAT_PARAMS,
    CHAT_ROLES,
    MAX_CHUNK_DIGITS,
    MAX_CHUNK_LINE,
    MAX_DEPTH,
    MAX_MESSAGES,
    ChatBody,
    ChunkError,
)
from agentd._fastpath_py import _item_key
from agentd.errors import BadRequest, invalid_type, param_error, unknown_parameter
from agentd.schema import check_metadata

__all__ = (
    "CACHE_KEY_MAX_DEPTH",
    "CHAT_IGNORED_FIELDS",
    "CHAT_LOCAL_FIELDS",
    "CHAT_MESSAGE_FIELDS",
    "CHAT_PARAMS",
    "CHAT_ROLES",
    "MAX_CHUNK_DIGITS",
    "MAX_CHUNK_LINE",
    "MAX_DEPTH",
    "MAX_MESSAGES",
    "SLOT_COUNT",
    "ChatBody",
    "ChunkDecoder",
    "ChunkError",
    "LRUCache",
    "cache_key",
    "key_slot",
    "parse_chat",
)

SLOT_COUNT = 16384


# Borrowed-reference views of the C API: no reference counting in the walkers.
cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX
    bint PyUnicode_Check(PyObject*)
    bint PyUnicode_CheckExact(PyObject*)
    bint PyBool_Check(PyObject*)
    bint PyLong_Check(PyObject*)
    bint PyLong_CheckExact(PyObject*)
    bint PyFloat_Check(PyObject*)
    bint PyFloat_CheckExact(PyObject*)
    bint PyList_Check(PyObject*)
    bint PyList_CheckExact(PyObject*)
    bint PyDict_Check(PyObject*)
    bint PyDict_CheckExact(PyObject*)
    int PyUnicode_READY(PyObject*) except -1
    bint PyUnicode_IS_ASCII(PyObject*)
    int PyUnicode_KIND(PyObject*)
    void* PyUnicode_DATA(PyObject*)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject*)
    uint32_t PyUnicode_READ(int kind, void* data, Py_ssize_t index)
    int PyUnicode_Compare(PyObject*, PyObject*)
    long long PyLong_AsLongLongAndOverflow(PyObject*, int*) except? -1
    double PyFloat_AS_DOUBLE(PyObject*)
    Py_ssize_t PyList_GET_SIZE(PyObject*)
    PyObject* PyList_GET_ITEM(PyObject*, Py_ssize_t)
    Py_ssize_t PyDict_GET_SIZE(PyObject*)
    int PyDict_Next(PyObject*, Py_ssize_t*, PyObject**, PyObject**)
    PyObject* PyDict_GetItem(PyObject*, PyObject*)
    int PyDict_SetItem(PyObject*, PyObject*, PyObject*) except -1
    int PyDict_DelItem(PyObject*, PyObject*) except -1
    PyObject* Py_None
    PyObject* Py_True
    PyObject* Py_False
    object PyLong_FromDouble(double)
    double PyLong_AsDouble(object) except? -1.0
    object PyDict_Items(object)
    void Py_INCREF(PyObject*)
    void Py_DECREF(PyObject*)


# -- key_slot ----------------------------------------------------------------------------

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
    cdef bytes data
    cdef PyObject* k = <PyObject*>key
    if PyUnicode_Check(k):
        PyUnicode_READY(k)
        if PyUnicode_IS_ASCII(k):  # ASCII is its own UTF-8: hash the str's storage
            return _slot_of(<const uint8_t*>PyUnicode_DATA(k), PyUnicode_GET_LENGTH(k))
        data = str.encode(key, "utf-8", "surrogatepass")
        return _slot_of(<const uint8_t*><char*>data, len(data))
    if isinstance(key, bytes):
        return _slot_of(<const uint8_t*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    if isinstance(key, (bytearray, memoryview)):
        data = bytes(key)
        return _slot_of(<const uint8_t*><char*>data, len(data))
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


# -- parse_chat --------------------------------------------------------------------------
#
# The body's and the messages' field names, and the roles, are looked up in small C
# tables built at import from the twin's CHAT_* tables: a length test and a memcmp on
# the str's ASCII storage, where a dict or set lookup would hash the value (a fresh str)
# and compare it with a constant that is not the same object as orjson's key. All the
# names are ASCII, so a non-ASCII str is never one of them.

# One bit per JSON type; a parameter's allowed types are a mask of them, derived from
# CHAT_PARAMS with chat's rule: a bool passes only where bool is named.
cdef enum:
    K_NONE = 1
    K_BOOL = 2
    K_INT = 4
    K_FLOAT = 8
    K_STR = 16
    K_LIST = 32
    K_DICT = 64

# Tags of the body's fields: the local ones by name, the parameters as PARAM + mask.
cdef enum:
    ABSENT = -1
    OTHER_LOCAL = 0
    F_MODEL = 1
    F_MESSAGES = 2
    F_STREAM = 3
    F_STREAM_OPTIONS = 4
    F_SESSION_ID = 5
    F_N = 6
    F_STORE = 7
    F_METADATA = 8
    PARAM = 1 << 16  # forwarded: PARAM + mask
    IGNORED = 1 << 17  # type-checked and dropped: IGNORED + mask
    # ...and of a message's.
    M_ROLE = 1
    M_CONTENT = 2
    M_OTHER = 3
    MAX_NAMES = 64


cdef struct _Name:
    const char* data
    Py_ssize_t size
    int tag


cdef struct _Names:
    int count
    _Name names[MAX_NAMES]


cdef _Names _BODY, _MESSAGE, _ROLE
cdef list _KEEP = []  # the bytes the tables point into


cdef void _add(_Names* table, str name, int tag) except *:
    cdef bytes data = name.encode("ascii")  # UnicodeEncodeError: this module won't import
    if table.count == MAX_NAMES:
        raise ImportError("too many names for the fastpath tables")
    _KEEP.append(data)
    table.names[table.count].data = PyBytes_AS_STRING(data)
    table.names[table.count].size = len(data)
    table.names[table.count].tag = tag
    table.count += 1


cdef inline int _find(const _Names* table, PyObject* s) noexcept:
    """The tag of the str ``s`` in ``table``, ABSENT if it is not there."""
    cdef Py_ssize_t n
    cdef const char* data
    cdef int i
    # No name is empty, so data[0] (the terminating NUL of an empty str) never matches.
    if not PyUnicode_IS_ASCII(s):  # every str orjson makes is ready
        return ABSENT
    n = PyUnicode_GET_LENGTH(s)
    data = <const char*>PyUnicode_DATA(s)
    for i in range(table.count):
        if (table.names[i].size == n and table.names[i].data[0] == data[0]
                and memcmp(table.names[i].data, data, n) == 0):
            return table.names[i].tag
    return ABSENT


cdef void _fill_tables() except *:
    local = {"model": F_MODEL, "messages": F_MESSAGES, "stream": F_STREAM,
             "stream_options": F_STREAM_OPTIONS, "session_id": F_SESSION_ID, "n": F_N,
             "store": F_STORE, "metadata": F_METADATA}
    for name in sorted(CHAT_LOCAL_FIELDS):
        _add(&_BODY, name, local.get(name, OTHER_LOCAL))
    for base, table in ((PARAM, CHAT_PARAMS), (IGNORED, CHAT_IGNORED_FIELDS)):
        for name, kinds in table.items():
            if name in CHAT_LOCAL_FIELDS:
                continue
            mask = K_BOOL if bool in kinds else 0
            for bit, sample in ((K_NONE, None), (K_INT, 0), (K_FLOAT, 0.0), (K_STR, ""),
                                (K_LIST, []), (K_DICT, {})):
                if isinstance(sample, kinds):
                    mask |= bit
            _add(&_BODY, name, base + mask)
    for name in sorted(CHAT_MESSAGE_FIELDS):
        _add(&_MESSAGE, name, M_ROLE if name == "role" else M_CONTENT if name == "content"
             else M_OTHER)
    for name in sorted(CHAT_ROLES):
        _add(&_ROLE, name, 1)


_fill_tables()

cdef Py_ssize_t _MAX_MESSAGES = MAX_MESSAGES
cdef int _MAX_DEPTH = MAX_DEPTH
cdef str _ROLES_TEXT = str(sorted(CHAT_ROLES))
cdef object _loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _new_tuple = tuple.__new__


cdef inline int _kind(PyObject* v) noexcept:
    if PyUnicode_Check(v):
        return K_STR
    if v == Py_None:
        return K_NONE
    if PyBool_Check(v):
        return K_BOOL
    if PyLong_Check(v):
        return K_INT
    if PyFloat_Check(v):
        return K_FLOAT
    if PyList_Check(v):
        return K_LIST
    if PyDict_Check(v):
        return K_DICT
    return 0


cdef bint _nests_deeper(PyObject* v, int budget) noexcept:
    """Whether ``v`` holds more than ``budget`` levels of containers (itself included).

    Walks orjson's fresh output through borrowed references: nothing here runs Python
    code. Recursion stops at ``budget`` levels (orjson itself stops at 1024).
    """
    cdef Py_ssize_t i, pos = 0
    cdef PyObject* key
    cdef PyObject* item
    if PyList_Check(v):
        if budget == 0:
            return True
        for i in range(PyList_GET_SIZE(v)):
            item = PyList_GET_ITEM(v, i)
            if (PyList_Check(item) or PyDict_Check(item)) and _nests_deeper(item, budget - 1):
                return True
    elif PyDict_Check(v):
        if budget == 0:
            return True
        while PyDict_Next(v, &pos, &key, &item):
            if (PyList_Check(item) or PyDict_Check(item)) and _nests_deeper(item, budget - 1):
                return True
    return False


cdef object _bad_role(Py_ssize_t i):
    return BadRequest(
        f"messages[{i}] must be an object with a role in {_ROLES_TEXT}", code="invalid_request"
    )


cdef object _too_deep():
    return BadRequest(f"the body nests deeper than {MAX_DEPTH} levels", code="invalid_json")


cdef inline bint _deeper(PyObject* v, int budget) noexcept:
    """``_nests_deeper`` for a value that is often a scalar."""
    return (PyList_Check(v) or PyDict_Check(v)) and _nests_deeper(v, budget)


cdef int _check_messages(PyObject* messages) except -1:
    # The twin's checks in the twin's order, and the depth of what the messages hold
    # (a message is at depth 3: the body, the list, itself). Borrowed references into
    # orjson's fresh output; Python code runs only to raise.
    cdef Py_ssize_t i, pos
    cdef PyObject* message
    cdef PyObject* role
    cdef PyObject* content
    cdef PyObject* key
    cdef PyObject* item
    cdef bint unknown, too_deep = False
    cdef int tag
    for i in range(PyList_GET_SIZE(messages)):
        message = PyList_GET_ITEM(messages, i)
        if not PyDict_Check(message):
            raise _bad_role(i)
        role = content = NULL
        unknown = False
        pos = 0
        while PyDict_Next(message, &pos, &key, &item):
            tag = _find(&_MESSAGE, key)
            if tag == M_ROLE:
                role = item
            elif tag == M_CONTENT:
                content = item
            elif tag == ABSENT:
                unknown = True
            elif _deeper(item, _MAX_DEPTH - 3):
                too_deep = True
        # A list or object role is as wrong as an unknown one.
        if role == NULL or not PyUnicode_Check(role) or _find(&_ROLE, role) == ABSENT:
            raise _bad_role(i)
        if unknown:
            raise unknown_parameter(min((<dict>message).keys() - CHAT_MESSAGE_FIELDS),
                                    f"messages[{i}]")
        if too_deep:
            raise _too_deep()
        if content != NULL and content != Py_None and not PyUnicode_Check(content):
            if not PyList_Check(content):
                raise BadRequest(f"messages[{i}].content must be a string or a list of parts",
                                 code="invalid_request")
            if _nests_deeper(content, _MAX_DEPTH - 3):
                raise _too_deep()
    return 0


cdef object _validate(dict body, object header_session):
    """The twin's checks on a body (a dict), and the depth check on the way.

    The depth is checked for whatever the pass walks before it finds an error, so an
    error may hide a body that nests too deeply: ``parse_chat`` then checks the whole
    body, as the twin checks it before anything else.
    """
    cdef PyObject* key
    cdef PyObject* item
    cdef PyObject* model = NULL
    cdef PyObject* messages = NULL
    cdef PyObject* stream = NULL
    cdef PyObject* options = NULL
    cdef PyObject* session = NULL
    cdef PyObject* n = NULL
    cdef PyObject* store = NULL
    cdef PyObject* metadata = NULL
    cdef PyObject* bad_param = NULL  # the first unsupported or ill-typed parameter
    cdef bint unsupported = False
    cdef Py_ssize_t pos = 0
    cdef int tag
    params = {}
    # One pass over the body: the local fields are noted, the parameters checked and
    # copied. The twin raises a parameter's error only after every other check, so the
    # first bad one (in the body's order) is kept for the end. Borrowed references into
    # orjson's fresh output: until the end, Python code runs only to compare `n` with 1
    # (JSON values: no user code) or to raise.
    while PyDict_Next(<PyObject*>body, &pos, &key, &item):
        tag = _find(&_BODY, key)
        if tag == F_MESSAGES:
            messages = item  # its depth is _check_messages's business
            continue
        if _deeper(item, _MAX_DEPTH - 1):
            raise _too_deep()
        if tag >= IGNORED:
            # null is absent; the first ill-typed field is kept for the end.
            if bad_param == NULL and item != Py_None and not (tag - IGNORED) & _kind(item):
                bad_param = key
        elif tag >= PARAM:
            if bad_param == NULL and item != Py_None:
                if (tag - PARAM) & _kind(item):
                    PyDict_SetItem(<PyObject*>params, key, item)
                else:
                    bad_param = key
        elif tag == F_MODEL:
            model = item
        elif tag == F_STREAM:
            stream = item
        elif tag == F_STREAM_OPTIONS:
            options = item
        elif tag == F_SESSION_ID:
            session = item
        elif tag == F_N:
            n = item
        elif tag == F_STORE:
            store = item
        elif tag == F_METADATA:
            metadata = item
        elif tag == ABSENT and bad_param == NULL:
            bad_param = key
            unsupported = True
    if model == NULL or not PyUnicode_Check(model) or PyUnicode_GET_LENGTH(model) == 0:
        raise BadRequest("model must be the name of an agent", code="invalid_request")
    if (messages == NULL or not PyList_Check(messages)
            or not 1 <= PyList_GET_SIZE(messages) <= _MAX_MESSAGES):
        raise BadRequest(
            f"messages must be a list of 1 to {MAX_MESSAGES} messages", code="invalid_request"
        )
    _check_messages(messages)
    if stream != NULL and stream != Py_None and not PyBool_Check(stream):
        raise invalid_type("stream", (bool,))
    if n != NULL and n != Py_None and <object>n != 1:
        raise param_error("n must be 1: agentd returns one choice", "unsupported_value", "n")
    # `body.get("stream_options") or {}`, then `.get("include_usage") is True`: only a
    # dict can say yes, and an empty one says no.
    include_usage = (options != NULL and PyDict_Check(options)
                     and PyDict_GetItem(options, <PyObject*>"include_usage") == Py_True)
    session_id = header_session if session == NULL else <object>session
    if session_id is not None and not isinstance(session_id, str):
        raise BadRequest("session_id must be a string", code="invalid_session_id")
    if store != NULL and store != Py_None and not PyBool_Check(store):
        raise invalid_type("store", (bool,))
    checked_metadata = None if metadata == NULL else check_metadata(<object>metadata)
    if bad_param != NULL:
        if unsupported:
            raise unknown_parameter(<object>bad_param)
        name = <object>bad_param
        raise invalid_type(name, CHAT_PARAMS.get(name) or CHAT_IGNORED_FIELDS[name])
    # ChatBody is a NamedTuple: made as tuple.__new__ makes it, without the Python-level
    # __new__ (the same object, at well under half the cost).
    return _new_tuple(ChatBody, (<object>model, <object>messages, session_id, params,
                                 stream == Py_True, include_usage, store != Py_False,
                                 checked_metadata))


def parse_chat(body, header_session):
    """Parse and validate a ``POST /v1/chat/completions`` body; :class:`BadRequest` if bad.

    ``body`` is the raw request body (bytes, bytearray, memoryview or str, else
    TypeError). Invalid JSON, or JSON nesting deeper than ``MAX_DEPTH`` levels, is
    ``invalid_json``; the rest is checked against the ``CHAT_*`` tables: a field in none
    of them is ``unknown_parameter``, one of the wrong JSON type ``invalid_type`` (both
    name it in the error's ``param``), and null counts as absent. A ``session_id`` in the
    body wins over ``header_session`` (the ``X-Session-Id`` header), even when null.
    """
    if not isinstance(body, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    try:
        value = _loads(body)
    except _JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        if _nests_deeper(<PyObject*>value, _MAX_DEPTH):
            raise _too_deep()
        raise BadRequest("the body must be a JSON object", code="invalid_request")
    try:
        return _validate(<dict>value, header_session)
    except BadRequest as exc:
        # A depth error comes first, wherever the nesting is.
        if exc.code != "invalid_json" and _nests_deeper(<PyObject*>value, _MAX_DEPTH):
            raise _too_deep() from None
        raise


# -- cache_key ---------------------------------------------------------------------------
#
# The canonical encoding is specified in the twin (_fastpath_py._encode), and so is the
# measurement behind hashing it with SHA-256: the C encoder below writes the same bytes.

cdef struct _Buf:
    unsigned char* data
    Py_ssize_t size
    Py_ssize_t cap
    unsigned char* stack  # the caller's initial storage; data is heap memory once it grows


cdef int _grow(_Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef unsigned char* p
    if extra > PY_SSIZE_T_MAX - b.size:
        raise MemoryError()
    while cap - b.size < extra:
        cap = cap * 2 if cap <= PY_SSIZE_T_MAX // 2 else PY_SSIZE_T_MAX
    if b.data == b.stack:
        p = <unsigned char*>PyMem_Malloc(cap)
        if p != NULL:
            memcpy(p, b.data, b.size)
    else:
        p = <unsigned char*>PyMem_Realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int _reserve(_Buf* b, Py_ssize_t extra) except -1:
    if extra > b.cap - b.size:
        return _grow(b, extra)
    return 0


cdef inline void _store_u64(unsigned char* p, uint64_t x) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <unsigned char>(x >> (8 * i))


cdef inline int _put_tag_u64(_Buf* b, char tag, uint64_t x) except -1:
    _reserve(b, 9)
    b.data[b.size] = <unsigned char>tag
    _store_u64(b.data + b.size + 1, x)
    b.size += 9
    return 0


cdef int _put_bytes(_Buf* b, char tag, const unsigned char* data, Py_ssize_t n) except -1:
    if n > PY_SSIZE_T_MAX - 9:
        raise MemoryError()
    _reserve(b, 9 + n)
    b.data[b.size] = <unsigned char>tag
    _store_u64(b.data + b.size + 1, <uint64_t>n)
    memcpy(b.data + b.size + 9, data, n)
    b.size += 9 + n
    return 0


cdef int _put_str(_Buf* b, PyObject* s) except -1:
    """``s`` + u64 length + UTF-8, surrogates encoded as by ``surrogatepass``."""
    cdef Py_ssize_t n, i, start, pos = 0
    cdef int kind
    cdef void* data
    cdef uint32_t c
    cdef unsigned char* out
    PyUnicode_READY(s)
    n = PyUnicode_GET_LENGTH(s)
    if PyUnicode_IS_ASCII(s):
        return _put_bytes(b, b's', <const unsigned char*>PyUnicode_DATA(s), n)
    kind = PyUnicode_KIND(s)
    data = PyUnicode_DATA(s)
    if n > (PY_SSIZE_T_MAX - 9) // 4:
        raise MemoryError()
    _reserve(b, 9 + n * (kind + 1 if kind < 4 else 4))  # the longest UTF-8 of n chars
    start = b.size
    out = b.data + start + 9
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        if c < 0x80:
            out[pos] = <unsigned char>c
            pos += 1
        elif c < 0x800:
            out[pos] = <unsigned char>(0xC0 | (c >> 6))
            out[pos + 1] = <unsigned char>(0x80 | (c & 0x3F))
            pos += 2
        elif c < 0x10000:
            out[pos] = <unsigned char>(0xE0 | (c >> 12))
            out[pos + 1] = <unsigned char>(0x80 | ((c >> 6) & 0x3F))
            out[pos + 2] = <unsigned char>(0x80 | (c & 0x3F))
            pos += 3
        else:
            out[pos] = <unsigned char>(0xF0 | (c >> 18))
            out[pos + 1] = <unsigned char>(0x80 | ((c >> 12) & 0x3F))
            out[pos + 2] = <unsigned char>(0x80 | ((c >> 6) & 0x3F))
            out[pos + 3] = <unsigned char>(0x80 | (c & 0x3F))
            pos += 4
    b.data[start] = b's'
    _store_u64(b.data + start + 1, <uint64_t>pos)
    b.size = start + 9 + pos
    return 0


cdef int _put_big_int(_Buf* b, object number) except -1:
    # Beyond int64: `I` + u64 length + two's complement, via int's own (unbound) methods.
    cdef Py_ssize_t size = (int.bit_length(number) + 8) // 8
    cdef bytes data = int.to_bytes(number, size, "little", signed=True)
    return _put_bytes(b, b'I', <const unsigned char*>PyBytes_AS_STRING(data), size)


cdef int _put_int(_Buf* b, PyObject* v) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow:
        return _put_big_int(b, <object>v)
    return _put_tag_u64(b, b'i', <uint64_t>x)


cdef int _put_float(_Buf* b, double x) except -1:
    cdef uint64_t bits
    if isfinite(x) and x == floor(x):  # integral: encoded as the equal int
        if -9223372036854775808.0 <= x < 9223372036854775808.0:
            return _put_tag_u64(b, b'i', <uint64_t><long long>x)
        return _put_big_int(b, PyLong_FromDouble(x))
    if isnan(x):
        bits = 0x7FF8000000000000ULL  # one NaN for all NaNs
    else:
        memcpy(&bits, &x, 8)
    return _put_tag_u64(b, b'd', bits)


cdef int _put_list(_Buf* b, PyObject* v, int depth) except -1:
    cdef Py_ssize_t i = 0
    cdef object item
    _put_tag_u64(b, b'l', <uint64_t>PyList_GET_SIZE(v))
    # Each item is held (a strong reference) while it is encoded, and the size is read
    # again each time: encoding a big int allocates, which may run a finalizer.
    while i < PyList_GET_SIZE(v):
        item = <object>PyList_GET_ITEM(v, i)
        _encode(b, <PyObject*>item, depth)
        i += 1
    return 0


cdef enum:
    SMALL_DICT = 16


cdef int _put_dict(_Buf* b, PyObject* v, int depth) except -1:
    # Small dicts of plain str keys: a strong-reference snapshot of the items on the
    # stack, insertion-sorted by code point. Anything else goes the twin's way.
    cdef PyObject* pairs[2 * SMALL_DICT]
    cdef PyObject* key
    cdef PyObject* item
    cdef Py_ssize_t n = PyDict_GET_SIZE(v), pos = 0, count = 0, i, j
    if n > SMALL_DICT:
        return _put_dict_sorted(b, v, depth)
    while PyDict_Next(v, &pos, &key, &item):  # borrowed, and nothing runs meanwhile
        if not PyUnicode_CheckExact(key) or count == n:
            break
        pairs[2 * count] = key
        pairs[2 * count + 1] = item
        count += 1
    if count != n:
        return _put_dict_sorted(b, v, depth)  # a non-str key, or a str subclass
    for i in range(2 * count):
        Py_INCREF(pairs[i])
    try:
        for i in range(1, count):
            key = pairs[2 * i]
            item = pairs[2 * i + 1]
            j = i - 1
            while j >= 0 and PyUnicode_Compare(pairs[2 * j], key) > 0:
                pairs[2 * j + 2] = pairs[2 * j]
                pairs[2 * j + 3] = pairs[2 * j + 1]
                j -= 1
            pairs[2 * j + 2] = key
            pairs[2 * j + 3] = item
        _put_tag_u64(b, b'm', <uint64_t>count)
        for i in range(count):
            _put_str(b, pairs[2 * i])
            _encode(b, pairs[2 * i + 1], depth)
    finally:
        for i in range(2 * count):
            Py_DECREF(pairs[i])
    return 0


cdef int _put_dict_sorted(_Buf* b, PyObject* v, int depth) except -1:
    cdef list items = PyDict_Items(<object>v)
    for key, _ in items:
        if not isinstance(key, str):
            raise TypeError(f"cache_key: dict keys must be str, not {type(key).__name__}")
    items.sort(key=_item_key)
    _put_tag_u64(b, b'm', <uint64_t>len(items))
    for key, item in items:
        _put_str(b, <PyObject*>key)
        _encode(b, <PyObject*>item, depth)
    return 0


cdef int _encode(_Buf* b, PyObject* v, int depth) except -1:
    """Append the canonical encoding of ``v``; ``depth`` counts the containers so far.

    The caller holds a reference to ``v``. Exact types first (the common case), then
    subclasses, read through their C storage as the twin reads them through the base
    type's methods.
    """
    if PyUnicode_CheckExact(v):
        return _put_str(b, v)
    if v == Py_None:
        _reserve(b, 1)
        b.data[b.size] = b'n'
        b.size += 1
        return 0
    if v == Py_True or v == Py_False:
        _reserve(b, 1)
        b.data[b.size] = b't' if v == Py_True else b'f'
        b.size += 1
        return 0
    if PyLong_CheckExact(v):
        return _put_int(b, v)
    if PyFloat_CheckExact(v):
        return _put_float(b, PyFloat_AS_DOUBLE(v))
    if PyList_CheckExact(v) or PyDict_CheckExact(v) or PyList_Check(v) or PyDict_Check(v):
        depth += 1
        if depth > CACHE_KEY_MAX_DEPTH:
            raise ValueError(
                f"cache_key: the input nests deeper than {CACHE_KEY_MAX_DEPTH} levels"
            )
        if PyList_Check(v):
            return _put_list(b, v, depth)
        return _put_dict(b, v, depth)
    if PyUnicode_Check(v):
        return _put_str(b, v)
    if PyLong_Check(v):
        return _put_int(b, v)
    if PyFloat_Check(v):
        return _put_float(b, PyFloat_AS_DOUBLE(v))
    raise TypeError(f"cache_key: {type(<object>v).__name__} is not a JSON value")


cdef enum:
    STACK_BUF = 8192
cdef bytes _CACHE_KEY_PREFIX = _fastpath_py._CACHE_KEY_PREFIX
cdef object _sha256 = hashlib.sha256


cdef int _put_raw(_Buf* b, bytes data) except -1:
    _reserve(b, len(data))
    memcpy(b.data + b.size, PyBytes_AS_STRING(data), len(data))
    b.size += len(data)
    return 0


def cache_key(agent, model, messages, params):
    """The 16-byte cache key of a model call: SHA-256 of a canonical encoding, cut to 128 bits.

    Canonical means: dict keys are sorted (by code point) at every level; numbers are
    compared by value (``1``, ``1.0`` and ``-0.0 == 0`` give the same key, every NaN
    the same key) but ``True``/``False`` are not numbers; strings are hashed as UTF-8
    (lone surrogates passed through); every part is typed and length-prefixed, so
    different inputs give different encodings. Values must be JSON-like (str, int,
    float, bool, None, list, dict with str keys; subclasses count as their base):
    anything else is TypeError, nesting deeper than ``CACHE_KEY_MAX_DEPTH`` ValueError.
    """
    cdef unsigned char stack[STACK_BUF]
    cdef _Buf b
    if not isinstance(agent, str):
        raise TypeError(f"agent must be str, not {type(agent).__name__}")
    if not isinstance(model, str):
        raise TypeError(f"model must be str, not {type(model).__name__}")
    if not isinstance(messages, list):
        raise TypeError(f"messages must be list, not {type(messages).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be dict, not {type(params).__name__}")
    b.data = stack
    b.stack = stack
    b.size = 0
    b.cap = STACK_BUF
    try:
        _put_raw(&b, _CACHE_KEY_PREFIX)
        _encode(&b, <PyObject*>agent, 0)
        _encode(&b, <PyObject*>model, 0)
        _encode(&b, <PyObject*>messages, 0)
        _encode(&b, <PyObject*>params, 0)
        # Hashed in place: a memoryview of the buffer, released before the buffer is.
        view = PyMemoryView_FromMemory(<char*>b.data, b.size, PyBUF_READ)
        try:
            digest = _sha256(view).digest()
        finally:
            view.release()
    finally:
        if b.data != b.stack:
            PyMem_Free(b.data)
    return digest[:16]


# -- LRUCache ----------------------------------------------------------------------------

@cython.final
@cython.freelist(64)
@cython.auto_pickle(False)
cdef class _Entry:
    cdef object key  # exactly bytes
    cdef object value
    cdef long long nbytes
    cdef double expires_at
    # Neighbours in the recency list. Borrowed: the cache's index dict owns every
    # entry, and an entry leaves the list before the index lets go of it.
    cdef PyObject* prev
    cdef PyObject* next


cdef inline void _unlink(_Entry e) noexcept:
    (<_Entry>e.prev).next = e.next
    (<_Entry>e.next).prev = e.prev


cdef inline void _link_last(_Entry root, _Entry e) noexcept:
    e.prev = root.prev
    e.next = <PyObject*>root
    (<_Entry>root.prev).next = <PyObject*>e
    root.prev = <PyObject*>e


cdef double _seconds(object value, str name) except? -1.0:
    """A time as a float, with no ``__float__`` hooks (as the twin's ``_seconds``)."""
    if isinstance(value, float):
        return PyFloat_AS_DOUBLE(<PyObject*>value)
    if isinstance(value, int):
        return PyLong_AsDouble(value)  # OverflowError past the float range
    raise TypeError(f"{name} must be a number, not {type(value).__name__}")


@cython.auto_pickle(False)
cdef class LRUCache:
    """An in-process LRU cache with a TTL per entry and a budget of bytes (the L1 cache).

    ``get``/``put``/``delete`` are O(1). Keys are ``bytes`` (exactly); each entry carries
    its size in bytes (as the caller counts it) and the time it expires (on the clock the
    caller passes to ``get``). ``hits``, ``misses`` and ``evictions`` only ever grow.
    """

    # A circular doubly linked list through _root: _root.next is the least recently
    # used entry, _root.prev the most. The index (key -> _Entry) owns the entries.
    # Invariant: an entry is in the list if and only if it is in the index, and every
    # method restores it before anything is released (a value's __del__ may call back).
    cdef dict _index
    cdef _Entry _root
    cdef long long _max_bytes, _nbytes, _hits, _misses, _evictions

    def __cinit__(self, *args, **kwargs):
        # Here, not in __init__: the cache is valid even if __init__ is never called.
        self._index = {}
        self._root = _Entry.__new__(_Entry)
        self._root.prev = self._root.next = <PyObject*>self._root

    def __init__(self, max_bytes):
        cdef int overflow = 0
        cdef long long limit
        if not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        limit = PyLong_AsLongLongAndOverflow(<PyObject*>max_bytes, &overflow)
        if overflow or limit < 0:
            raise ValueError("max_bytes must be from 0 to 2**63 - 1")
        self._max_bytes = limit
        self._hits = self._misses = self._evictions = 0
        self.clear()  # last: the old entries' finalizers see the new settings

    def get(self, key, now):
        """The value under ``key``, made the most recently used; None if absent or expired.

        An entry expires when ``now >= expires_at`` (or either is NaN); it is then
        dropped. Counts a hit or a miss.
        """
        cdef double t
        cdef PyObject* found
        cdef _Entry e
        if type(key) is not bytes:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        t = _seconds(now, "now")
        # Exact bytes keys: the lookup runs no Python code.
        found = PyDict_GetItem(<PyObject*>self._index, <PyObject*>key)
        if found == NULL:
            self._misses += 1
            return None
        e = <_Entry>found
        if not t < e.expires_at:
            _unlink(e)
            self._nbytes -= e.nbytes
            PyDict_DelItem(<PyObject*>self._index, <PyObject*>key)  # e stays alive here
            self._misses += 1
            return None
        if e.next != <PyObject*>self._root:
            _unlink(e)
            _link_last(self._root, e)
        self._hits += 1
        return e.value

    def put(self, key, value, nbytes, expires_at):
        """Store ``value`` under ``key`` (replacing any entry) as the most recently used,
        then evict least recently used entries until the budget holds.

        ``nbytes`` is a non-negative int. An entry bigger than ``max_bytes`` is not
        stored (and the key's old entry, if any, is dropped).
        """
        cdef int overflow = 0
        cdef long long size
        cdef double t
        cdef PyObject* found
        cdef _Entry e = None, old = None, victim
        cdef bint fits
        if type(key) is not bytes:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if not isinstance(nbytes, int):
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        size = PyLong_AsLongLongAndOverflow(<PyObject*>nbytes, &overflow)
        if overflow < 0 or (overflow == 0 and size < 0):
            raise ValueError("nbytes must be a non-negative int")
        t = _seconds(expires_at, "expires_at")
        fits = overflow == 0 and size <= self._max_bytes
        if fits:
            # Allocate first: an allocation may run the garbage collector, hence any
            # finalizer, hence this cache; from the lookup on, no Python code runs.
            e = _Entry.__new__(_Entry)
            e.key = key
            e.value = value
            e.nbytes = size
            e.expires_at = t
        found = PyDict_GetItem(<PyObject*>self._index, <PyObject*>key)
        if found != NULL:
            old = <_Entry>found  # released on return, when the books balance
            _unlink(old)
            self._nbytes -= old.nbytes
            if not fits:
                PyDict_DelItem(<PyObject*>self._index, <PyObject*>key)
        if not fits:
            return None
        PyDict_SetItem(<PyObject*>self._index, <PyObject*>key, <PyObject*>e)
        _link_last(self._root, e)
        self._nbytes += size
        while self._nbytes > self._max_bytes and self._root.next != <PyObject*>self._root:
            victim = <_Entry>self._root.next
            _unlink(victim)
            self._nbytes -= victim.nbytes
            self._evictions += 1
            PyDict_DelItem(<PyObject*>self._index, <PyObject*>victim.key)
            # Release it now, the books balanced: its finalizer may call back, so the
            # next turn must read the list afresh.
            victim = None
        return None

    def delete(self, key):
        """Drop the entry under ``key``; True if there was one (expired or not)."""
        cdef PyObject* found
        cdef _Entry old
        if type(key) is not bytes:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        found = PyDict_GetItem(<PyObject*>self._index, <PyObject*>key)
        if found == NULL:
            return False
        old = <_Entry>found
        _unlink(old)
        self._nbytes -= old.nbytes
        PyDict_DelItem(<PyObject*>self._index, <PyObject*>key)
        return True

    def clear(self):
        """Drop every entry (the counters are kept)."""
        cdef dict fresh = {}
        cdef dict entries = self._index
        self._index = fresh
        self._root.prev = self._root.next = <PyObject*>self._root
        self._nbytes = 0
        entries.clear()  # the entries (and any finalizer) go only now

    def keys(self):
        """Every key, from the least to the most recently used (expired ones included)."""
        cdef list out = []
        cdef PyObject* p = self._root.next
        # Appending to a list runs no Python code: the borrowed walk is safe.
        while p != <PyObject*>self._root:
            out.append((<_Entry>p).key)
            p = (<_Entry>p).next
        return out

    def __len__(self):
        return len(self._index)

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @property
    def nbytes(self):
        """The bytes held: the sum of the entries' ``nbytes``."""
        return self._nbytes

    @property
    def max_bytes(self):
        """The budget: ``nbytes`` never exceeds it after a ``put``."""
        return self._max_bytes

    @property
    def hits(self):
        """``get`` calls that returned a live entry."""
        return self._hits

    @property
    def misses(self):
        """``get`` calls that found no entry, or an expired one."""
        return self._misses

    @property
    def evictions(self):
        """Entries dropped by ``put`` to keep the byte budget."""
        return self._evictions


# -- ChunkDecoder ------------------------------------------------------------------------
#
# The grammar and the limits are the twin's (see its ChunkDecoder); so is ChunkError.
# feed walks the read's bytes in place: the body bytes are copied once, into the result
# (not at all when they are the whole read), and a line cut by the end of a read is the
# only thing kept for the next one (at most MAX_CHUNK_LINE + 1 bytes).

cdef enum:
    _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER, _CHUNK_END, _CHUNK_FAILED

cdef Py_ssize_t _LINE_WINDOW = MAX_CHUNK_LINE + 2  # where a line's CRLF must be found
cdef int _MAX_CHUNK_DIGITS = MAX_CHUNK_DIGITS
# Each byte's hex value, or -1.
cdef signed char _HEX_VALUE[256]


cdef void _fill_hex() noexcept:
    cdef int c
    for c in range(256):
        _HEX_VALUE[c] = -1
    for c in range(10):
        _HEX_VALUE[ord('0') + c] = c
    for c in range(6):
        _HEX_VALUE[ord('a') + c] = _HEX_VALUE[ord('A') + c] = 10 + c


_fill_hex()


cdef inline Py_ssize_t _find_crlf(
    const unsigned char* p, Py_ssize_t pos, Py_ssize_t stop
) noexcept nogil:
    """The index of the first CRLF wholly in p[pos:stop], or -1 (as bytes.find)."""
    cdef const unsigned char* cr
    while stop - pos >= 2:
        cr = <const unsigned char*>memchr(p + pos, 13, stop - pos - 1)
        if cr == NULL:
            return -1
        pos = cr - p
        if p[pos + 1] == 10:
            return pos
        pos += 1
    return -1


# The body bytes of one feed: the first piece in place, the others appended to a buffer.
cdef struct _Pieces:
    Py_ssize_t start, size  # the first piece, in the read
    int count
    _Buf buf


cdef int _piece(_Pieces* o, const unsigned char* p, Py_ssize_t start, Py_ssize_t size) except -1:
    if o.count == 0:
        o.start, o.size = start, size
    else:
        if o.count == 1:
            _reserve(&o.buf, o.size)
            memcpy(o.buf.data, p + o.start, o.size)
            o.buf.size = o.size
        _reserve(&o.buf, size)
        memcpy(o.buf.data + o.buf.size, p + start, size)
        o.buf.size += size
    o.count += 1
    return 0


cdef bytes _joined(_Pieces* o, bytes data):
    if o.count == 0:
        return b""
    if o.count > 1:
        return PyBytes_FromStringAndSize(<char*>o.buf.data, o.buf.size)
    if o.start == 0 and o.size == PyBytes_GET_SIZE(data):
        return data
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + o.start, o.size)


@cython.final
@cython.auto_pickle(False)
cdef class ChunkDecoder:
    """Decodes one body in HTTP/1.1's chunked transfer coding, read by read.

    ``feed`` takes the bytes of each read and returns the body bytes they complete;
    a read may end anywhere (in a size line, in a chunk's data, between the data and
    its CRLF, in the trailers). ``done`` turns true at the blank line after the last
    chunk; ``extra`` says bytes came after it. Malformed input is ChunkError: a chunk
    size that is not 1 to ``MAX_CHUNK_DIGITS`` hex digits (optionally followed by
    spaces or tabs and ``;`` extensions), a line longer than ``MAX_CHUNK_LINE``, chunk
    data not followed by CRLF; a decoder that failed fails again on every ``feed``.
    """

    cdef int _state
    cdef bint _extra
    cdef long long _remaining  # in _CHUNK_DATA: data bytes left, then the chunk's CRLF
    cdef bytes _line  # the start of a line (or a chunk's CR) kept for the next read
    cdef str _error

    def __cinit__(self, *args, **kwargs):
        # Also here: the decoder is valid even if __init__ is never called.
        self._line = b""
        self._error = ""

    def __init__(self):
        self._state = _CHUNK_SIZE
        self._remaining = 0
        self._line = b""
        self._extra = False
        self._error = ""

    def feed(self, data):
        """The body bytes that ``data`` completes (``b""`` if none), joined."""
        cdef unsigned char stack[STACK_BUF]
        cdef _Pieces o
        cdef int failed
        if type(data) is not bytes:
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if self._state >= _CHUNK_END:
            if self._state == _CHUNK_FAILED:
                raise ChunkError(self._error)
            if PyBytes_GET_SIZE(data):
                self._extra = True
            return b""
        if PyBytes_GET_SIZE(self._line):
            data = self._line + data
            self._line = b""
        o.count = 0
        o.buf.data = o.buf.stack = stack
        o.buf.size = 0
        o.buf.cap = STACK_BUF
        try:
            failed = self._decode(<bytes>data, &o)
            body = _joined(&o, <bytes>data)
        finally:
            if o.buf.data != o.buf.stack:
                PyMem_Free(o.buf.data)
        if failed:
            self._state = _CHUNK_FAILED
            self._line = b""
            self._error = (
                "a chunk size line is too long", "a trailer line is too long",
                "a bad chunk size", "a chunk size with too many digits",
                "a chunk without its CRLF",
            )[failed - 1]
            raise ChunkError(self._error, body)
        return body

    cdef int _decode(self, bytes data, _Pieces* o) except -1:
        """Walk ``data`` from the current state; 0, or the number of the fault."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(data), eol, i, stop
        cdef long long remaining = self._remaining
        cdef int state = self._state, digits, value
        while pos < end:
            if state != _CHUNK_DATA:  # a line: a chunk size, or a trailer
                eol = _find_crlf(p, pos, end if end - pos < _LINE_WINDOW else pos + _LINE_WINDOW)
                if eol < 0:
                    if end - pos >= _LINE_WINDOW or (
                        end - pos == _LINE_WINDOW - 1 and p[end - 1] != 13
                    ):
                        return 1 if state == _CHUNK_SIZE else 2
                    self._line = PyBytes_FromStringAndSize(<char*>p + pos, end - pos)
                    break
                if state == _CHUNK_TRAILER:
                    if eol == pos:  # the blank line: the end of the body
                        self._state = _CHUNK_END
                        self._extra = pos + 2 < end
                        return 0
                    pos = eol + 2
                    continue
                # 1*HEXDIG, then nothing, or BWS ";" and extensions (read past).
                remaining = 0
                digits = 0
                i = pos
                while i < eol:
                    value = _HEX_VALUE[p[i]]
                    if value < 0:
                        break
                    if digits < _MAX_CHUNK_DIGITS:  # past it, the size is refused below
                        remaining = remaining * 16 + value
                    digits += 1
                    i += 1
                if i < eol:
                    while i < eol and (p[i] == 32 or p[i] == 9):
                        i += 1
                    if i == eol or p[i] != 59:  # spaces with no ";", or another byte
                        digits = 0
                if digits == 0:
                    return 3
                if digits > _MAX_CHUNK_DIGITS:
                    return 4
                pos = eol + 2
                if remaining == 0:
                    state = _CHUNK_TRAILER
                    continue
                state = _CHUNK_DATA
            # The chunk's data (what is left of it), then its CRLF.
            if remaining > end - pos:
                _piece(o, p, pos, end - pos)
                remaining -= end - pos
                break
            stop = pos + <Py_ssize_t>remaining
            if remaining:
                _piece(o, p, pos, stop - pos)
                remaining = 0
            if end - stop < 2 or p[stop] != 13 or p[stop + 1] != 10:
                if end - stop >= 2 or (stop < end and p[stop] != 13):
                    return 5
                self._line = PyBytes_FromStringAndSize(<char*>p + stop, end - stop)
                break
            pos = stop + 2
            state = _CHUNK_SIZE
        self._state = state
        self._remaining = remaining
        return 0

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @property
    def done(self):
        """The body ended: the last chunk and the blank line after its trailers came."""
        return self._state == _CHUNK_END

    @property
    def extra(self):
        """Bytes came after the end of the body (the connection is then not reusable)."""
        return self._extra
