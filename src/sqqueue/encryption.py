"""Encryption at rest for SQLite queue files, with SQLCipher (``sqqueue[encryption]``).

A key is a passphrase (``str``; SQLCipher derives the key from it) or 32 raw bytes.
It comes from the ``encryption_key=`` argument, else the ``SQQUEUE_ENCRYPTION_KEY``
environment variable, else the file named by ``SQQUEUE_ENCRYPTION_KEY_FILE`` (which only
its owner may read). In the environment and in a key file, ``x'<64 hex digits>'`` is a raw
key and anything else a passphrase (one trailing newline of a file is not part of it).

The key is held by an :class:`EncryptionKey`, whose ``repr`` and ``str`` never show it,
and is only ever given to SQLCipher in ``PRAGMA key``, the first statement on every
connection. This module also copies a database between its plain and encrypted forms
(``encrypt``, ``decrypt``, ``rekey``): a new file is written, checked, then put in place,
so an interrupted run leaves the source's data as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .backends import sqlite_sql as sql
from .exceptions import ErrorKind, QueueError

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "CopyReport",
    "EncryptionError",
    "EncryptionKey",
    "decrypt",
    "driver",
    "encrypt",
    "file_kind",
    "key_connection",
    "read_key_file",
    "read_secret_file",
    "rekey",
    "resolve_key",
]

logger = logging.getLogger(__name__)

ENV_KEY = "SQQUEUE_ENCRYPTION_KEY"
ENV_KEY_FILE = "SQQUEUE_ENCRYPTION_KEY_FILE"
INSTALL_HINT = "pip install 'sqqueue[encryption]'"
GIVE_KEY = f"encryption_key=, {ENV_KEY} or {ENV_KEY_FILE}"
_RAW = re.compile(r"^x'([0-9a-fA-F]{64})'$")
#: the first 16 bytes of a plain SQLite file (an encrypted one starts with its salt)
SQLITE_MAGIC = b"SQLite format 3\x00"


class EncryptionError(QueueError):
    """A key that cannot be used, or a file that does not match the key given."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INVALID_INPUT) -> None:
        super().__init__(message, kind)


class EncryptionKey:
    """An encryption key that never shows itself: not in ``repr``, ``str`` or pickles
    of objects that print their attributes."""

    __slots__ = ("_pragma",)

    def __init__(self, key: str | bytes) -> None:
        if isinstance(key, bytes):
            if len(key) != 32:
                raise ValueError(
                    f"a raw encryption key is 32 bytes, got {len(key)}; "
                    "or give a passphrase as a str"
                )
            self._pragma = f"\"x'{key.hex()}'\""
        elif isinstance(key, str):
            if not key:
                raise ValueError("the encryption key (passphrase) is empty")
            if "\x00" in key:
                raise ValueError("the encryption key (passphrase) contains a NUL character")
            raw = _RAW.match(key)
            if raw:
                self._pragma = f"\"x'{raw.group(1).lower()}'\""
            else:
                self._pragma = "'" + key.replace("'", "''") + "'"
        else:
            raise ValueError(
                f"encryption_key must be a str passphrase or 32 raw bytes, got {type(key).__name__}"
            )

    def pragma_value(self) -> str:
        """The key as SQL for ``PRAGMA key = ...`` (quoted and escaped)."""
        return self._pragma

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncryptionKey) and other._pragma == self._pragma

    def __hash__(self) -> int:
        return hash(self._pragma)

    def __repr__(self) -> str:
        return "EncryptionKey(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        # Child processes (a worker's runners) get the key as it was given.
        raw = _RAW.match(self._pragma.strip('"'))
        if raw:
            return (EncryptionKey, (bytes.fromhex(raw.group(1)),))
        return (EncryptionKey, (self._pragma[1:-1].replace("''", "'"),))


def read_key_file(path: str | os.PathLike[str]) -> EncryptionKey:
    """The key in a file that only its owner may read (``ValueError`` otherwise)."""
    return EncryptionKey(read_secret_file(path))


def read_secret_file(path: str | os.PathLike[str], what: str = "key file") -> str:
    """The text of a file that only its owner may read, less one final line end
    (``ValueError`` otherwise, or when it is empty): a key file, a token file (``what``
    names it in the errors)."""
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {name!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"the {what} {name!r} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 or (hasattr(os, "geteuid") and info.st_uid != os.geteuid()):
        raise ValueError(
            f"the {what} {name!r} may be read by others (owner uid {info.st_uid}, mode "
            f"{mode:04o}); it must belong to this user and be readable by it only: "
            f"run 'chmod 600 {name}'"
        )
    try:
        with open(name, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} {name!r}: {exc}") from None
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    if not text:
        raise ValueError(f"the {what} {name!r} is empty")
    return text


def resolve_key(
    key: str | bytes | EncryptionKey | None = None,
    environ: Mapping[str, str] | None = None,
) -> EncryptionKey | None:
    """The key to use: ``key``, else ``SQQUEUE_ENCRYPTION_KEY``, else the file named by
    ``SQQUEUE_ENCRYPTION_KEY_FILE``; None when there is none (a plain file)."""
    if isinstance(key, EncryptionKey):
        return key
    if key is not None:
        return EncryptionKey(key)
    env = os.environ if environ is None else environ
    if env.get(ENV_KEY):
        try:
            return EncryptionKey(env[ENV_KEY])
        except ValueError as exc:
            raise ValueError(f"{ENV_KEY}: {exc}") from None
    if env.get(ENV_KEY_FILE):
        try:
            return read_key_file(env[ENV_KEY_FILE])
        except ValueError as exc:
            raise ValueError(f"{ENV_KEY_FILE}: {exc}") from None
    return None


def driver() -> ModuleType:
    """The ``sqlcipher3`` module (the ``sqlite3`` API on SQLCipher), or ``RuntimeError``
    saying what to install."""
    try:
        import sqlcipher3
    except ImportError:
        raise RuntimeError(f"encryption needs the sqlcipher3 package: {INSTALL_HINT}") from None
    module: ModuleType = sqlcipher3
    return module


def driver_errors() -> tuple[type[Exception], ...]:
    """The base exception classes of SQLite's drivers: sqlite3's, and sqlcipher3's own
    (a separate class tree) once the extra is imported."""
    return (sqlite3.Error, driver().Error)


def key_connection(conn: Any, key: EncryptionKey) -> None:
    """Key a freshly opened SQLCipher connection: ``PRAGMA key`` comes before any other
    statement. Also silences SQLCipher's own log, which would print a wrong key's page
    errors on stderr (wrong keys are reported by sqqueue instead)."""
    conn.execute(sql.CIPHER_KEY.format(key=key.pragma_value()))
    conn.execute(sql.CIPHER_QUIET)


def file_kind(path: str | os.PathLike[str]) -> str:
    """``"missing"``, ``"empty"`` (a new database), ``"plain"`` (an SQLite header) or
    ``"opaque"`` (encrypted, or not a database at all).

    Not for a file this process may have open (see ``maybe_open``): closing a file drops
    every POSIX lock the process holds on it, its SQLite connections' included."""
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return "missing"
    if not header:
        return "empty"
    return "plain" if header == SQLITE_MAGIC else "opaque"


def maybe_open(path: str | os.PathLike[str]) -> bool:
    """Whether a connection may have the database ``path`` open: its -shm exists.

    Then its header is not read. A connection of this process holds POSIX locks on the
    file, which closing any descriptor of it would drop (they belong to the process);
    SQLite's connections elsewhere would take it for gone: the last of them to close
    would remove the WAL under it, a rekey would replace the file. (A sqqueue connection
    is in WAL mode, which keeps the -shm for as long as the file is open.)"""
    return os.path.exists(f"{os.fspath(path)}-shm")


def mismatch(path: str, key: EncryptionKey | None) -> str | None:
    """Why ``path`` cannot be opened with ``key`` as far as its header tells: a plain
    file given a key. (A wrong key, or no key for an encrypted file, shows on the first
    read, as SQLite's "file is not a database"; so does a plain file given a key while
    the file is open, whose header is not read: see ``maybe_open`` and ``wrong_key``.)"""
    return None if key is None else _plain(path)


def _plain(path: str) -> str | None:
    """That ``path`` is a plain SQLite file, if its header can be read and says so."""
    if maybe_open(path) or file_kind(path) != "plain":
        return None
    return (
        f"wrong key or not an encrypted sqqueue database: {path!r} is a plain "
        "(unencrypted) SQLite file; open it without a key, or encrypt it with "
        f"'sqqueue encrypt {path} ENCRYPTED.db'"
    )


def wrong_key(path: str) -> str:
    """The explanation of SQLCipher's "file is not a database" for a keyed open (that the
    file is plain, when its header can be read)."""
    return _plain(path) or (
        f"wrong key or not an encrypted sqqueue database: {path!r} cannot be read "
        f"with the key given ({GIVE_KEY})"
    )


def connect(path: str, key: EncryptionKey | None, **options: Any) -> Any:
    """A connection to ``path`` (sqlite3's, or SQLCipher's keyed with ``key``)."""
    if key is None:
        return sqlite3.connect(path, **options)
    conn = driver().connect(path, **options)
    try:
        key_connection(conn, key)
    except BaseException:
        conn.close()
        raise
    return conn


# -- copying between plain and encrypted ------------------------------------------------


@dataclass(frozen=True)
class CopyReport:
    """What ``encrypt``/``decrypt``/``rekey`` wrote: rows per table, checked equal."""

    source: str
    target: str
    tables: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


Progress = Callable[[str, int], None]


def _counts(conn: Any) -> dict[str, int]:
    names = [r[0] for r in conn.execute(sql.USER_TABLES)]
    return {n: int(conn.execute(sql.ROW_COUNT.format(table=n)).fetchone()[0]) for n in names}


def not_plain_hint(path: str) -> str:
    """What a file without an SQLite header is, when no key was given."""
    return (
        f"{path!r} is not an SQLite database; if this file is encrypted: give its key "
        f"({GIVE_KEY}); else check the path"
    )


def _open_checked(path: str, key: EncryptionKey | None) -> Any:
    """A connection to an existing database, with the key checked on a first read."""
    problem = mismatch(path, key)
    if problem is not None:
        raise EncryptionError(problem)
    conn = connect(path, key, isolation_level=None)
    try:
        conn.execute(sql.READ_SCHEMA).fetchone()
    except Exception as exc:
        conn.close()
        if "not a database" in str(exc):
            text = wrong_key(path) if key is not None else not_plain_hint(path)
            raise EncryptionError(text) from None
        raise
    return conn


def _export(
    src: Any,
    source: str,
    partial: str,
    target_key: EncryptionKey | None,
    exclusive: bool = False,
) -> dict[str, int]:
    """Copy every table of ``source``, open on ``src`` (an SQLCipher connection), into the
    empty file ``partial`` with ``sqlcipher_export``, in one transaction (``exclusive``:
    holding the source's write lock); the source's row counts."""
    cipher = driver()
    attach_key = target_key.pragma_value() if target_key is not None else "''"
    src.execute(sql.ATTACH_TARGET.format(key=attach_key), (partial,))
    try:
        # One snapshot of the source for the counts and the copy.
        src.execute(sql.BEGIN_EXCLUSIVE if exclusive else sql.BEGIN)
        try:
            counts = _counts(src)
            src.execute(sql.EXPORT_TO_TARGET)
            version = src.execute(sql.MAIN_USER_VERSION).fetchone()[0]
            src.execute(sql.SET_TARGET_USER_VERSION.format(version=int(version)))
            src.execute(sql.COMMIT)
        except BaseException:
            with contextlib.suppress(cipher.Error):
                src.execute(sql.ROLLBACK)
            raise
    except cipher.DatabaseError as exc:
        if "not a database" in str(exc):
            raise EncryptionError(wrong_key(source)) from None
        raise
    finally:
        with contextlib.suppress(cipher.Error):
            src.execute(sql.DETACH_TARGET)
    return counts


def _export_from(
    source: str, partial: str, source_key: EncryptionKey | None, target_key: EncryptionKey | None
) -> dict[str, int]:
    """``_export`` on a connection of its own to ``source``."""
    # SQLCipher's, even for a plain source (it reads those given no key), so that the one
    # connection ATTACHes the copy with the copy's own key.
    src = driver().connect(source, isolation_level=None)
    try:
        if source_key is not None:
            key_connection(src, source_key)
        else:
            src.execute(sql.CIPHER_QUIET)
        return _export(src, source, partial, target_key)
    finally:
        src.close()


def _verify(partial: str, key: EncryptionKey | None, expected: dict[str, int]) -> dict[str, int]:
    """Read the copy back with its key: every table, the same counts, a sound file."""
    check = _open_checked(partial, key)
    try:
        found = _counts(check)
        integrity = check.execute(sql.QUICK_CHECK).fetchone()[0]
        mode = str(check.execute(sql.JOURNAL_MODE_WAL).fetchone()[0])  # as sqqueue keeps files
    finally:
        check.close()
    if mode.lower() != "wal":
        raise EncryptionError(
            f"the copy {partial!r} cannot be put in WAL mode (it is in {mode} mode); "
            "the source is unchanged",
            ErrorKind.STORAGE,
        )
    if found != expected or integrity != "ok":
        raise EncryptionError(
            f"the copy {partial!r} does not match its source ({integrity}; "
            f"{found} != {expected}); the source is unchanged",
            ErrorKind.CORRUPT,
        )
    return found


def _copy(
    source: str,
    target: str,
    source_key: EncryptionKey | None,
    target_key: EncryptionKey | None,
    progress: Progress | None,
    held: _Held | None = None,
) -> CopyReport:
    """Copy every table of ``source`` into a new file, check the counts match, then move
    it to ``target``. Until that last step only ``<target>.partial`` is written, so an
    interrupted copy leaves ``source`` (and ``target``) as they were.

    ``held``: the source, taken by ``_hold`` (rekey): the copy is read through its
    connection, and it replaces the source."""
    if held is None:
        # (A held source was checked before it was taken; and opening it again now, even
        # to read its header, would drop the hold's locks when closed: POSIX locks belong
        # to the process, and any descriptor closed on the file releases them all.)
        if not os.path.exists(source):
            raise EncryptionError(f"no database at {source!r}", ErrorKind.NOT_FOUND)
        if os.path.exists(target):
            raise EncryptionError(f"{target!r} exists already; give the name of a new file")
        problem = mismatch(source, source_key)
        if problem is not None:
            raise EncryptionError(problem)
    partial = f"{target}.partial"
    for leftover in (partial, f"{partial}-wal", f"{partial}-shm", f"{partial}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)  # a copy that was interrupted before
    os.close(os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    if held is None:
        counts = _export_from(source, partial, source_key, target_key)
    else:
        counts = _export(held.conn, source, partial, target_key, exclusive=True)
    if progress is not None:
        progress("copied", sum(counts.values()))
    found = _verify(partial, target_key, counts)
    if progress is not None:
        progress("verified", sum(found.values()))
    _fsync(partial)
    if held is None:
        os.replace(partial, target)
    else:
        held.replace_with(partial)
    _fsync_dir(target)
    logger.info(
        "copied %s to %s: %d rows in %d tables", source, target, sum(found.values()), len(found)
    )
    return CopyReport(source, target, found)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _given(key: str | bytes | EncryptionKey) -> EncryptionKey:
    if isinstance(key, EncryptionKey):
        return key
    return EncryptionKey(key)


@contextlib.contextmanager
def _quiet_source(path: str, key: EncryptionKey | None) -> Iterator[None]:
    """Checkpoint the source first, so that the copy holds what its WAL holds."""
    if not os.path.isfile(path):  # (opening it would create an empty file there)
        raise EncryptionError(f"no database at {path!r}", ErrorKind.NOT_FOUND)
    conn = _open_checked(path, key)
    try:
        conn.execute(sql.CHECKPOINT_TRUNCATE)
    finally:
        conn.close()
    yield


def encrypt(
    plain: str | os.PathLike[str],
    encrypted: str | os.PathLike[str],
    key: str | bytes | EncryptionKey,
    progress: Progress | None = None,
) -> CopyReport:
    """Write an encrypted copy of the plain database ``plain`` to the new file
    ``encrypted`` (every table, counts checked); ``plain`` is left as it was."""
    target_key = _given(key)
    source = os.fspath(plain)
    problem = _not_plain(source, target_key)
    if problem is not None:
        raise EncryptionError(problem)
    with _quiet_source(source, None):
        return _copy(source, os.fspath(encrypted), None, target_key, progress)


def _not_plain(path: str, key: EncryptionKey) -> str | None:
    """Why ``path``, to be encrypted with ``key``, is no plain SQLite file, when its header
    says so: encrypted already (with that key, or another), or not a database at all."""
    if maybe_open(path) or file_kind(path) != "opaque":
        return None  # (a plain file, or none: the copy says what it finds)
    driver()  # (without the extra, that is what to say: RuntimeError naming it)
    try:
        _open_checked(path, key).close()
    except Exception:  # (any failure means: not with this key)
        return (
            f"{path!r} is not a plain SQLite database: it is encrypted already, under "
            "another key than the one given (decrypt or rekey it with its own key), or "
            "it is not a database at all (check the path)"
        )
    return (
        f"{path!r} is encrypted already, with the key given: nothing to encrypt; to "
        f"encrypt it under another key, rekey it ('sqqueue --key-file KEY rekey {path} "
        "--new-key-file NEW_KEY', or sqqueue.encryption.rekey)"
    )


def decrypt(
    encrypted: str | os.PathLike[str],
    plain: str | os.PathLike[str],
    key: str | bytes | EncryptionKey,
    progress: Progress | None = None,
) -> CopyReport:
    """Write a plain copy of the encrypted database ``encrypted`` to the new file ``plain``."""
    source_key = _given(key)
    with _quiet_source(os.fspath(encrypted), source_key):
        return _copy(os.fspath(encrypted), os.fspath(plain), source_key, None, progress)


def rekey(
    path: str | os.PathLike[str],
    old_key: str | bytes | EncryptionKey,
    new_key: str | bytes | EncryptionKey,
    progress: Progress | None = None,
) -> CopyReport:
    """Re-encrypt ``path`` with ``new_key``: a copy under the new key is written and
    checked next to it, then atomically replaces it.

    A process with the file open would go on writing to the replaced file, where nothing
    reads it. So the file is first taken for this call alone: while any process (this one
    included) has it open, rekey is refused with an ``EncryptionError`` (kind ``LOCKED``)
    and nothing changes; stop every process using the queue, then run it again. Until the
    copy replaces the file, no other process can open it."""
    old, new = _given(old_key), _given(new_key)
    # The file itself, through any symlink: its copy is written beside it and replaces it
    # there (replacing the link would leave the real file, scrambled, where it was).
    name = os.path.realpath(os.fspath(path))
    with _hold(name, old) as held:
        return _copy(name, name, old, new, progress, held)


# -- holding the file a rekey replaces ----------------------------------------------------

#: how long rekey waits for a process that has the file open to let go of it (a command
#: that reads it for a moment), before it gives up: the file is in use
IN_USE_WAIT = 2.0
# What is overwritten in the file a rekey replaced: the salt and the rest of the first
# page (of SQLCipher's default size; at least the first page whatever the page size).
_SCRAMBLED = 4096


class _Held:
    """The file ``path``, held by this process alone on the connection ``conn``."""

    def __init__(self, path: str, conn: Any) -> None:
        self.path = path
        self.conn = conn
        self.replaced = False
        self._old: int | None = None  # a descriptor of the replaced file

    def replace_with(self, partial: str) -> None:
        """Put ``partial`` in place of the held file, and make the file it replaced
        unreadable: a process that opened the path before the replace, and waits for
        the lock, then finds no database there (a key error) instead of writing where
        nobody will read."""
        self._old = os.open(self.path, os.O_WRONLY)  # the same file the connection holds
        os.replace(partial, self.path)
        self.replaced = True
        try:
            os.pwrite(self._old, bytes(_SCRAMBLED), 0)
        except OSError as exc:  # the new file is in place all the same
            logger.warning("%s: the file it replaced is left readable: %s", self.path, exc)

    def release(self) -> None:
        """Let go of the file; if it was not replaced, back in WAL mode, as it was."""
        try:
            if not self.replaced:
                # Back in WAL mode, as sqqueue keeps its files (in vain if the disk
                # failed: sqqueue sets WAL again whenever it opens the file).
                with contextlib.suppress(*driver_errors()):
                    if self.conn.in_transaction:
                        self.conn.execute(sql.ROLLBACK)
                    self.conn.execute(sql.JOURNAL_MODE_WAL).fetchall()
            self.conn.close()
        finally:
            # Closed last: closing any descriptor of a file drops every lock this process
            # holds on it (POSIX), the hold's included.
            if self._old is not None:
                os.close(self._old)


@contextlib.contextmanager
def _hold(path: str, key: EncryptionKey) -> Iterator[_Held]:
    """``path`` held by this process alone, on one connection keyed with ``key``, for the
    block: refused (``EncryptionError``, kind ``LOCKED``) while another connection, in
    this process or another, has it open.

    ``locking_mode = EXCLUSIVE`` keeps every lock the connection takes until it closes;
    leaving WAL mode (``journal_mode = DELETE``) takes the file's exclusive lock, which
    SQLite only grants when no other connection has the WAL open, copies the WAL into the
    file and removes the -wal and -shm. Out of WAL mode, closing the connection removes no
    -wal by name, which, once the file is replaced, would be the new file's."""
    if not os.path.isfile(path):  # (opening it would create an empty file there)
        raise EncryptionError(f"no database at {path!r}", ErrorKind.NOT_FOUND)
    problem = mismatch(path, key)
    if problem is not None:
        raise EncryptionError(problem)
    in_use = EncryptionError(
        f"{path!r} is in use: a process has it open (an application's queue, a worker, a "
        "command); stop every process using it, then run rekey again (nothing was changed)",
        ErrorKind.LOCKED,
    )
    conn = connect(path, key, isolation_level=None, timeout=IN_USE_WAIT)
    try:
        # "main." only: the copy attached beside it keeps the usual locking and journal.
        conn.execute(sql.LOCKING_MODE_EXCLUSIVE).fetchall()
        mode = str(conn.execute(sql.JOURNAL_MODE_DELETE).fetchone()[0])
    except driver_errors() as exc:
        conn.close()
        text = str(exc).lower()
        if "not a database" in text:
            raise EncryptionError(wrong_key(path)) from None
        if "locked" in text or "busy" in text:
            raise in_use from None
        raise
    if mode.lower() != "delete":  # (SQLite answers the mode it kept when it cannot change)
        conn.close()
        raise in_use
    held = _Held(path, conn)
    try:
        yield held
    finally:
        held.release()
