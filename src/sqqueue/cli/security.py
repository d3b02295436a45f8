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
from . import base

__all__ = ["decrypt_command", "encrypt_command", "key_file_option", "rekey_command", "use_key_file"]


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


def _current_key(what: str) -> EncryptionKey:
    """The key of --key-file or the environment; ``what`` says which key it is meant to be."""
    try:
        key = encryption.resolve_key(None)
    except ValueError as exc:
        raise base.CliError(str(exc)) from None
    if key is None:
        raise base.CliError(
            f"{what}: give the key with --key-file PATH (before the command) or "
            f"{encryption.ENV_KEY_FILE}"
        )
    return key


def _new_key(path: str) -> EncryptionKey:
    """The key in the file ``path`` (refused unless only its owner may read it)."""
    try:
        return encryption.read_key_file(path)
    except ValueError as exc:
        raise base.CliError(str(exc)) from None


def _progress(stage: str, rows: int) -> None:
    """Report a finished stage on stderr, so that stdout keeps only the result."""
    click.echo(f"{stage} {rows} rows", err=True)


def _run(action: Callable[[], encryption.CopyReport]) -> None:
    """Run a copy; print what it wrote, or fail with its error."""
    started = time.monotonic()
    try:
        report = action()
    except (encryption.EncryptionError, ValueError, RuntimeError) as exc:
        raise base.CliError(str(exc)) from None
    click.echo(
        f"{report.target}: {report.rows} rows in {len(report.tables)} tables, "
        f"checked ({time.monotonic() - started:.1f} s)"
    )


@click.command("encrypt")
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
    key = _current_key("the key of the new file")
    _run(lambda: encryption.encrypt(plain, encrypted, key, _progress))


@click.command("decrypt")
@click.argument("encrypted", metavar="ENCRYPTED")
@click.argument("plain", metavar="PLAIN")
def decrypt_command(encrypted: str, plain: str) -> None:
    """Write a plain copy of the encrypted file ENCRYPTED (key: --key-file) to the new
    file PLAIN.

    \b
    Example:
      sqqueue --key-file /etc/app/queue.key decrypt jobs.db jobs-plain.db
    """
    key = _current_key("the key of the encrypted file")
    _run(lambda: encryption.decrypt(encrypted, plain, key, _progress))


@click.command("rekey")
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
    replaces it. Refused while any process has DB open: stop the processes using
    the queue first.

    \b
    Example:
      sqqueue --key-file old.key rekey jobs.db --new-key-file new.key
    """
    old = _current_key("the current key of DB")
    new = _new_key(new_key_file)
    _run(lambda: encryption.rekey(db, old, new, _progress))
