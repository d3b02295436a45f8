"""sqqueue from this repository on an encrypted file (SQLCipher, ``sqqueue[encryption]``),
with a raw 32-byte key: the same settings as the plain file's subject, measured in the
same run beside it, so the rows show what encryption at rest costs."""

from __future__ import annotations

from typing import Any, ClassVar

from .sqqueue_current import Adapter as Current

# A fixed raw key: a passphrase would add a key derivation to each connection opened.
KEY = bytes(range(32))


class Adapter(Current):
    name = "sqqueue-encrypted"
    package = "sqqueue[encryption]"
    semantics = "sqqueue's, on a file encrypted with SQLCipher (raw 32-byte key)"
    filename = "sqqueue-encrypted.db"
    extra: ClassVar[dict[str, Any]] = {"encryption_key": KEY}

    @classmethod
    def version(cls) -> str:
        import sqlcipher3

        (cipher,) = sqlcipher3.connect(":memory:").execute("PRAGMA cipher_version").fetchone()
        return f"{super().version()}, SQLCipher {cipher}"
