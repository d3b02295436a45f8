"""sqqueue from this repository on an encrypted file (SQLCipher, ``sqqueue[encryption]``),
with a raw 32-byte key: the same settings as the plain file's subject, measured in the
same run beside it, so the rows show what encryption at rest costs."""

from __future__ import annotations

import os

from .sqqueue_current import Adapter as Current

# A fixed raw key: a passphrase would add a key derivation to each connection opened.
KEY = bytes(range(32))


class Adapter(Current):
    name = "sqqueue-encrypted"
    package = "sqqueue[encryption]"
    semantics = "sqqueue's, on a file encrypted with SQLCipher (raw 32-byte key)"

    def __init__(self, workdir: str) -> None:
        from sqqueue import SQLiteQueue

        from .base import Adapter as Base

        Base.__init__(self, workdir)  # not Current's: that opens the plain file
        self.path = os.path.join(workdir, "sqqueue-encrypted.db")
        self.q = SQLiteQueue(
            self.path,
            table_name="bench",
            vacuum_threshold=1000,
            default_visibility_timeout=300.0,
            synchronous="normal",
            lock_timeout=30.0,
            encryption_key=KEY,
        )

    @classmethod
    def version(cls) -> str:
        import sqlcipher3

        (cipher,) = sqlcipher3.connect(":memory:").execute("PRAGMA cipher_version").fetchone()
        return f"{super().version()}, SQLCipher {cipher}"
