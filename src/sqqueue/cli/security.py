"""The encryption commands: ``encrypt``, ``decrypt`` and ``rekey`` of SQLite files. The
work is done by :mod:`sqqueue.encryption`; these are its command-line faces.

Keys are never taken on the command line (other users see a process's arguments): they
come from ``--key-file`` (on the ``sqqueue`` group, for every command) or the
``SQQUEUE_ENCRYPTION_KEY`` / ``SQQUEUE_ENCRYPTION_KEY_FILE`` environment variables, and
a new key from ``--new-key-file``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import click

from .. import encryption
from ..encryption import EncryptionKey

__all__ = ["key_file_option", "register", "use_key_file"]


def use_key_file(path: str) -> None:
    """Make ``path`` the key file of every queue this process opens (and of its child
    processes): checked now, then named in ``SQQUEUE_ENCRYPTION_KEY_FILE``."""
    encryption.read_key_file(path)  # refuses a file others may read, before any work
    os.environ.pop(encryption.ENV_KEY, None)
    os.environ[encryption.ENV_KEY_FILE] = os.path.abspath(path)


key_file_option = click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Encryption key of the SQLite files, in a file only you may read (else "
    "SQQUEUE_ENCRYPTION_KEY or SQQUEUE_ENCRYPTION_KEY_FILE).",
)


def register(group: click.Group, error: Callable[[str], Exception]) -> None:
    """Add the security commands to ``group``; ``error(text)`` is the exception a command
    raises to fail with ``error: text``."""

    def current_key(what: str) -> EncryptionKey:
        try:
            key = encryption.resolve_key(None)
        except ValueError as exc:
            raise error(str(exc)) from None
        if key is None:
            raise error(
                f"{what}: give the key with --key-file PATH (before the command) or "
                f"{encryption.ENV_KEY_FILE}"
            )
        return key

    def new_key(path: str) -> EncryptionKey:
        try:
            return encryption.read_key_file(path)
        except ValueError as exc:
            raise error(str(exc)) from None

    def progress(stage: str, rows: int) -> None:
        click.echo(f"{stage} {rows} rows", err=True)

    def run(action: Callable[[], encryption.CopyReport]) -> None:
        started = time.monotonic()
        try:
            report = action()
        except (encryption.EncryptionError, ValueError, RuntimeError) as exc:
            raise error(str(exc)) from None
        click.echo(
            f"{report.target}: {report.rows} rows in {len(report.tables)} tables, "
            f"checked ({time.monotonic() - started:.1f} s)"
        )

    @group.command("encrypt")
    @click.argument("plain", metavar="PLAIN")
    @click.argument("encrypted", metavar="ENCRYPTED")
    def encrypt_command(plain: str, encrypted: str) -> None:
        """Write an encrypted copy of the plain SQLite file PLAIN to the new file ENCRYPTED,
        with the key of --key-file; PLAIN is left as it was (delete it once you have
        checked the copy).

        \b
        Example:
          sqqueue --key-file /etc/app/queue.key encrypt jobs.db jobs-encrypted.db
        """
        key = current_key("the key of the new file")
        run(lambda: encryption.encrypt(plain, encrypted, key, progress))

    @group.command("decrypt")
    @click.argument("encrypted", metavar="ENCRYPTED")
    @click.argument("plain", metavar="PLAIN")
    def decrypt_command(encrypted: str, plain: str) -> None:
        """Write a plain copy of the encrypted file ENCRYPTED (key: --key-file) to the new
        file PLAIN.

        \b
        Example:
          sqqueue --key-file /etc/app/queue.key decrypt jobs.db jobs-plain.db
        """
        key = current_key("the key of the encrypted file")
        run(lambda: encryption.decrypt(encrypted, plain, key, progress))

    @group.command("rekey")
    @click.argument("db", metavar="DB")
    @click.option(
        "--new-key-file",
        required=True,
        type=click.Path(dir_okay=False),
        metavar="PATH",
        help="The new key, in a file only you may read.",
    )
    def rekey_command(db: str, new_key_file: str) -> None:
        """Encrypt DB with a new key: a copy is written and checked beside it, then
        replaces it. Stop the processes using the queue first.

        \b
        Example:
          sqqueue --key-file old.key rekey jobs.db --new-key-file new.key
        """
        old = current_key("the current key of DB")
        new = new_key(new_key_file)
        run(lambda: encryption.rekey(db, old, new, progress))
