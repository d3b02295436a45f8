"""How payloads become stored values, and back.

Built in, without configuration:

* ``str`` is stored as TEXT, exactly as written (readable in the ``sqlite3`` shell);
* ``bytes`` (and ``bytearray``/``memoryview``) are stored as a BLOB and come back as ``bytes``;
* JSON values (``dict``, ``list``, ``int``, ``float``, ``bool``, ``None``) are stored as JSON
  text and come back with their type. Only values that survive the round trip exactly are
  accepted: a tuple, a set or a dict with non-``str`` keys is refused rather than changed.

Anything else needs a :class:`Serializer` passed to the queue. Pickle is never used unless
you write such a serializer yourself, because unpickling runs code chosen by whoever could
write to the database file.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import sys
import zlib
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .exceptions import ErrorKind, QueueError

__all__ = ["BUILTIN_ENCODINGS", "Codec", "Encoded", "Serializer", "json_text"]

TEXT, BYTES, JSON = "text", "bytes", "json"
BUILTIN_ENCODINGS = frozenset({TEXT, BYTES, JSON})


@runtime_checkable
class Serializer(Protocol):
    """A custom payload format.

    ``name`` is stored with every message so a reader knows how to decode it; keep it
    stable. Example with msgpack::

        class MsgPack:
            name = "msgpack"
            def dumps(self, obj): return msgpack.packb(obj)
            def loads(self, data): return msgpack.unpackb(data)

        queue = SQLiteQueue("jobs.db", serializer=MsgPack())
    """

    name: str

    def dumps(self, obj: Any) -> bytes | str: ...

    def loads(self, data: bytes | str) -> Any: ...


_tuple_new = tuple.__new__


class Encoded(NamedTuple):
    """A payload ready to store: the stored value, its encoding name and checksum."""

    data: str | bytes
    encoding: str
    checksum: int


def checksum_of(data: str | bytes) -> int:
    """CRC-32 of the stored bytes (UTF-8 for text): detects payloads changed on disk."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return zlib.crc32(raw)


def _serialization_error(message: str) -> QueueError:
    return QueueError(message, ErrorKind.SERIALIZATION)


#: Deeper JSON is refused: Python's JSON decoder recurses, so a payload nested close to
#: the interpreter's recursion limit could be stored yet fail to decode in a consumer.
MAX_JSON_DEPTH = 500


def _conversion_hint(item: object) -> str:
    """How to turn a value JSON cannot hold into one it can."""
    if isinstance(item, tuple):
        return "convert it to a list"
    if isinstance(item, (set, frozenset)):
        return "convert it to a list (e.g. sorted(...))"
    if isinstance(item, (datetime.date, datetime.time)):
        return "convert it to a string (e.g. value.isoformat())"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "encode it as text (e.g. base64), or enqueue the bytes on their own"
    if isinstance(item, decimal.Decimal):
        return "convert it to a str (exact) or a float"
    return "convert it to a str, int, float, bool, list or dict"


def _shown(value: object) -> str:
    """``repr(value)`` for an error message, or its type's name when its own code raises."""
    try:
        return repr(value)
    except BaseException:  # (a user's __repr__ may raise anything: it is input)
        return f"a {type(value).__name__}"


def _check_json_value(value: object, what: str = "payload", custom: bool = True) -> None:
    """Refuse values that JSON would silently change (tuples, int keys, NaN, ...) or that
    could not be decoded again (nested too deeply, or containing themselves).

    ``what`` names the value in the error; ``custom``: suggest a custom serializer."""
    serializer = " or pass serializer=... to the queue" if custom else ""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise _serialization_error(
                    f"{what} contains {_shown(item)}, which JSON cannot represent; "
                    f"send it as a string{serializer}"
                )
            continue
        if type(item) is list or type(item) is dict:
            if depth >= MAX_JSON_DEPTH:
                raise _serialization_error(
                    f"{what} is nested more than {MAX_JSON_DEPTH} lists or dicts deep (or "
                    f"contains itself), too deep to decode reliably; flatten it{serializer}"
                )
            if type(item) is list:
                stack.extend([(sub, depth + 1) for sub in item])
                continue
            assert isinstance(item, dict)
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise _serialization_error(
                        f"{what} dict has a non-str key {_shown(key)}; JSON keys are strings, so it "
                        f"would come back changed. Use str keys{serializer}"
                    )
                stack.append((sub, depth + 1))
            continue
        raise _serialization_error(
            f"{what} contains a {type(item).__name__}, which does not round-trip through "
            f"JSON; {_conversion_hint(item)}{serializer}"
        )


def _json_text(value: object, ascii_only: bool, what: str = "payload", custom: bool = True) -> str:
    """``value`` (already checked) as compact JSON text."""
    serializer = ", or pass serializer=... to the queue" if custom else ""
    try:
        return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))
    except RecursionError as exc:
        # Within MAX_JSON_DEPTH, but the caller's own stack was already deep.
        raise _serialization_error(
            f"{what} is nested too deeply to write as JSON here; flatten it{serializer}"
        ) from exc
    except ValueError as exc:
        # What the check leaves to json: an int with more digits than Python will turn
        # into text (sys.get_int_max_str_digits()).
        limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        digits = f" (more than {limit} digits)" if limit else ""
        raise _serialization_error(
            f"{what} contains an integer too long to write as JSON text{digits}; send it "
            f"as a string{serializer}"
        ) from exc


def json_text(value: object, what: str = "value") -> str:
    """``value`` as JSON text, refusing (``QueueError``, SERIALIZATION, naming it ``what``)
    anything that would not come back the same (a tuple, a set, a dict with non-``str``
    keys, NaN, nesting too deep to decode)."""
    _check_json_value(value, what, custom=False)
    text = _json_text(value, ascii_only=False, what=what, custom=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be stored as UTF-8 text; JSON's \u escapes can.
        text = _json_text(value, ascii_only=True, what=what, custom=False)
    return text


class Codec:
    """Encodes payloads for storage and decodes stored rows, verifying checksums."""

    def __init__(self, serializer: Serializer | None = None) -> None:
        if serializer is not None:
            if not isinstance(serializer, Serializer):
                raise ValueError(
                    "serializer must have a 'name' and 'dumps'/'loads' methods "
                    "(see sqqueue.Serializer)"
                )
            if not isinstance(serializer.name, str) or not serializer.name:
                raise ValueError("serializer.name must be a non-empty str")
            if serializer.name in BUILTIN_ENCODINGS:
                raise ValueError(
                    f"serializer.name {serializer.name!r} is reserved for a built-in encoding"
                )
        self.serializer = serializer

    def encode(self, payload: object) -> Encoded:
        """Turn ``payload`` into an :class:`Encoded`; raise ``QueueError`` if it cannot."""
        if self.serializer is not None:
            try:
                data = self.serializer.dumps(payload)
            except Exception as exc:
                raise _serialization_error(
                    f"serializer {self.serializer.name!r} could not encode the payload: {exc}"
                ) from exc
            if not isinstance(data, (str, bytes)):
                raise _serialization_error(
                    f"serializer {self.serializer.name!r} returned "
                    f"{type(data).__name__}; dumps() must return bytes or str"
                )
            return Encoded(data, self.serializer.name, _checksum_checked(data))
        if isinstance(payload, str):
            # The most common payload: checksum_of inline, and the tuple built without
            # the named tuple's __new__ (a Python function): 1% of an enqueue, 4% of a
            # batch (bench/profile-notes.md).
            try:
                return _tuple_new(Encoded, (payload, TEXT, zlib.crc32(payload.encode("utf-8"))))
            except UnicodeEncodeError:
                return Encoded(payload, TEXT, _checksum_checked(payload))
        if isinstance(payload, (bytes, bytearray, memoryview)):
            data = bytes(payload)
            return Encoded(data, BYTES, zlib.crc32(data))
        if payload is None or isinstance(payload, (bool, int, float, list, dict)):
            _check_json_value(payload)
            text = _json_text(payload, ascii_only=False)
            try:
                return Encoded(text, JSON, checksum_of(text))
            except UnicodeEncodeError:
                # Lone surrogates cannot be stored as UTF-8 text; JSON's \\u escapes can.
                text = _json_text(payload, ascii_only=True)
                return Encoded(text, JSON, checksum_of(text))
        raise _serialization_error(
            f"cannot store a payload of type {type(payload).__name__}: sqqueue stores str, "
            "bytes and JSON values (dict, list, int, float, bool, None) by itself; for other "
            "types pass serializer=... (an object with name, dumps and loads) to the queue"
        )

    def decode(self, data: object, encoding: str, checksum: int | None) -> Any:
        """Return the payload of a stored row; raise ``QueueError`` (CORRUPT) if it is damaged."""
        if not isinstance(data, (str, bytes)):
            raise QueueError(
                f"stored payload has SQL type {type(data).__name__}, not text or blob",
                ErrorKind.CORRUPT,
            )
        if checksum is not None:
            try:
                actual = checksum_of(data)
            except UnicodeEncodeError as exc:
                raise QueueError(
                    f"stored text is not valid UTF-8: {exc}", ErrorKind.CORRUPT
                ) from exc
            if actual != checksum:
                if type(checksum) is not int:
                    raise QueueError(
                        f"stored checksum {checksum!r} is not an integer", ErrorKind.CORRUPT
                    )
                raise QueueError(
                    f"payload checksum mismatch (stored {checksum:#010x}, computed "
                    f"{actual:#010x}): the stored bytes were changed on disk",
                    ErrorKind.CORRUPT,
                )
        try:
            if encoding == TEXT:
                return data if isinstance(data, str) else data.decode("utf-8")
            if encoding == BYTES:
                return data if isinstance(data, bytes) else data.encode("utf-8")
            if encoding == JSON:
                return json.loads(data)
            if self.serializer is not None and encoding == self.serializer.name:
                return self.serializer.loads(data)
        except Exception as exc:
            raise QueueError(
                f"stored payload could not be decoded as {encoding!r}: {exc}", ErrorKind.CORRUPT
            ) from exc
        raise QueueError(
            f"stored payload uses encoding {encoding!r}, which this queue does not know; "
            f"open the queue with a serializer named {encoding!r} to read it",
            ErrorKind.CORRUPT,
        )


def _checksum_checked(data: str | bytes) -> int:
    try:
        return checksum_of(data)
    except UnicodeEncodeError as exc:
        bad = data[exc.start] if isinstance(data, str) else "?"
        raise _serialization_error(
            f"payload text contains {bad!r} (U+{ord(bad):04X}), a lone surrogate that cannot "
            "be stored as UTF-8; encode it yourself (e.g. .encode('utf-8', 'surrogatepass')) "
            "and enqueue bytes"
        ) from exc
