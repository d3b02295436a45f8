"""Signed messages: HMAC-SHA-256 over what a message is, so that only holders of the key
can create or alter work that consumers will run.

A signature covers, in a canonical and versioned encoding:

- the stored payload's bytes (text as UTF-8; a large body kept apart from its row is
  signed as the body itself). Whether the database holds them as text or bytes is not
  covered: PostgreSQL keeps a text holding NUL as bytes, and the codec reads both alike;
- ``encoding`` (which serializer reads the payload);
- ``priority``, ``max_attempts`` and the group key.

These steer what runs and in which order, and never change while the message lives,
redrives included. Not covered, on purpose: the id and the queue (given by the database
after signing; a valid row may be copied or moved between queues sharing a key), the
attempts, visibility, lease and last error (they change on every delivery and retry), the
time to live (the database computes the expiry from its own clock when it inserts, and a
redrive clears it), and the deduplication key (kept in its own table for the window only,
it decides whether an enqueue adds a message, not what the message does). Replaying or
delaying a whole valid row is not prevented by a signature: see docs/security.md.

The signature is stored as text, ``v1:`` and 64 hex digits: the prefix names the
encoding, so another one can be added without reading old rows wrongly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .encryption import read_secret_file

__all__ = ["ENV_KEY", "ENV_KEY_FILE", "SigningKeys", "resolve_signing_key"]

ENV_KEY = "SQQUEUE_SIGNING_KEY"
ENV_KEY_FILE = "SQQUEUE_SIGNING_KEY_FILE"

_VERSION = "v1:"
_DOMAIN = b"sqqueue message signature v1\x00"


def _field(value: bytes) -> bytes:
    """One field, its length first: no two different messages encode alike."""
    return len(value).to_bytes(8, "big") + value


def canonical(
    data: object, encoding: object, priority: object, max_attempts: object, group: object
) -> bytes | None:
    """The bytes a signature covers; None when the fields are not of their types (a row
    edited by hand), which no signature matches."""
    if isinstance(data, str):
        try:
            body = data.encode("utf-8")
        except UnicodeEncodeError:
            return None
    elif isinstance(data, bytes):
        body = data
    else:
        return None
    if not (
        isinstance(encoding, str)
        and type(priority) is int
        and type(max_attempts) is int
        and (group is None or isinstance(group, str))
    ):
        return None
    try:
        encoded = encoding.encode("utf-8")
        grouped = b"" if group is None else b"g" + group.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return b"".join(
        (
            _DOMAIN,
            _field(body),
            _field(encoded),
            _field(str(priority).encode()),
            _field(str(max_attempts).encode()),
            _field(grouped),
        )
    )


def _key_bytes(key: object, where: str) -> bytes:
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    else:
        raise ValueError(
            f"{where} must be a str or bytes key, or a list of them, got {type(key).__name__}"
        )
    if not raw:
        raise ValueError(f"{where} is empty; give a key of at least one byte (32 random ones)")
    return raw


class SigningKeys:
    """The keys of a signing queue: the first signs, any of them verifies (rotation).

    Never shows a key: not in ``repr``, ``str`` or error texts.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        if isinstance(keys, (str, bytes, bytearray)):
            self._keys: tuple[bytes, ...] = (_key_bytes(keys, "signing_key"),)
        elif isinstance(keys, (list, tuple)):
            if not keys:
                raise ValueError(
                    "signing_key is an empty list; give at least one key (the first signs)"
                )
            self._keys = tuple(_key_bytes(k, f"signing_key[{i}]") for i, k in enumerate(keys))
        else:
            raise ValueError(
                "signing_key must be a str or bytes key, or a list of them (the first signs, "
                f"any verifies), got {type(keys).__name__}"
            )

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"SigningKeys(<{len(self._keys)} hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (SigningKeys, (list(self._keys),))

    def sign(
        self, data: str | bytes, encoding: str, priority: int, max_attempts: int, group: str | None
    ) -> str:
        """The signature of a new message, with the first key."""
        covered = canonical(data, encoding, priority, max_attempts, group)
        if covered is None:
            raise ValueError("cannot sign a message whose fields are not of their types")
        return _VERSION + hmac.new(self._keys[0], covered, hashlib.sha256).hexdigest()

    def verify(
        self,
        signature: object,
        data: object,
        encoding: object,
        priority: object,
        max_attempts: object,
        group: object,
    ) -> bool:
        """Whether ``signature`` is that of these fields under one of the keys."""
        if not isinstance(signature, str) or not signature.startswith(_VERSION):
            return False
        given = signature[len(_VERSION) :].encode("ascii", "replace")
        covered = canonical(data, encoding, priority, max_attempts, group)
        if covered is None:
            return False
        found = False
        for key in self._keys:  # every key is tried: the time does not tell which matched
            digest = hmac.new(key, covered, hashlib.sha256).hexdigest().encode()
            found |= hmac.compare_digest(digest, given)
        return found


def resolve_signing_key(
    key: str | bytes | Sequence[str | bytes] | SigningKeys | None = None,
    environ: Mapping[str, str] | None = None,
) -> SigningKeys | None:
    """The keys a queue signs and verifies with: ``key``, else ``SQQUEUE_SIGNING_KEY``
    (one key), else the file named by ``SQQUEUE_SIGNING_KEY_FILE`` (one key per line, the
    first signs; only its owner may read it); None when there is none (no signing).
    Raises ``ValueError`` for a key that cannot be used."""
    if isinstance(key, SigningKeys):
        return key
    if key is not None:
        return SigningKeys(key)
    env = os.environ if environ is None else environ
    if env.get(ENV_KEY):
        return SigningKeys(env[ENV_KEY])
    if env.get(ENV_KEY_FILE):
        try:
            text = read_secret_file(env[ENV_KEY_FILE])
        except ValueError as exc:
            raise ValueError(f"{ENV_KEY_FILE}: {exc}") from None
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        keys = [line for line in lines if line]
        if not keys:
            raise ValueError(f"{ENV_KEY_FILE}: the key file holds no key")
        return SigningKeys(keys)
    return None
