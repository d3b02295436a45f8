"""The SQLite file, apart from any queue: the driver (sqlite3, or SQLCipher for an
encrypted file) and its errors, what a failure means (``classify``), permissions and free
space, creating the file owner-only, reading it without changing it, the probe the
watcher reads, and connections that must not cross a fork.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .. import encryption
from ..encryption import EncryptionKey
from ..exceptions import ErrorKind
from ..wakeup import POLL_IDLE, Watcher
from . import file_events
from . import sqlite_sql as sql
from .base import StorageError

__all__ = [
    "MIN_SQLITE_VERSION",
    "FileState",
    "access_problem",
    "check_sqlite_version",
    "classify",
    "connect",
    "driver_errors",
    "file_identity",
    "file_state",
    "is_connection",
    "lenient_text",
    "not_a_database",
    "open_read_only",
    "parked_after_fork",
    "prepare_path",
    "refuse_mismatch",
    "release_driver",
    "resolve_key",
    "undecodable_text",
    "use_driver",
    "use_sqlcipher",
    "wal_progress",
    "watcher_for",
    "writable",
]

logger = logging.getLogger(__name__)

MIN_SQLITE_VERSION = (3, 35, 0)  # the oldest release sqqueue supports


# What the drivers raise: sqlite3's errors, and sqlcipher3's own (a class tree of its
# own) once an encrypted file has been opened in this process (see use_sqlcipher).
_errors: tuple[type[sqlite3.Error], ...] = (sqlite3.Error,)


def driver_errors() -> tuple[type[sqlite3.Error], ...]:
    """The exception classes of the drivers in use: catch these, not sqlite3.Error."""
    return _errors


def use_sqlcipher() -> Any:
    """The sqlcipher3 module, its errors now caught like sqlite3's."""
    global _errors
    cipher = encryption.driver()
    if len(_errors) == 1:
        _errors = (sqlite3.Error, cipher.Error)
    return cipher


def connect(key: EncryptionKey | None, target: str, **options: Any) -> sqlite3.Connection:
    """A connection to ``target``: sqlite3's, or for an encrypted file SQLCipher's, keyed
    before any other statement runs."""
    if key is None:
        plain: sqlite3.Connection = sqlite3.connect(target, **options)
        return plain
    conn = use_sqlcipher().connect(target, **options)
    try:
        encryption.key_connection(conn, key)
    except BaseException:
        conn.close()
        raise
    return conn  # type: ignore[no-any-return]  # the sqlite3 API, on SQLCipher


def resolve_key(key: str | bytes | EncryptionKey | None) -> EncryptionKey | None:
    """The key to open a file with (see ``encryption.resolve_key``); with one, sqlcipher3
    is imported now, so a missing extra is reported before any file is created."""
    resolved = encryption.resolve_key(key)
    if resolved is not None:
        use_sqlcipher()
    return resolved


def check_sqlite_version(version: tuple[int, int, int] | None = None) -> None:
    """Raise ``RuntimeError`` if the SQLite library is older than sqqueue needs."""
    found = version or sqlite3.sqlite_version_info
    if found < MIN_SQLITE_VERSION:
        raise RuntimeError(
            f"sqqueue needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer; "
            "this Python uses SQLite "
            f"{'.'.join(map(str, found))}. Use a newer Python build or install 'pysqlite3-binary'."
        )


# --------------------------------------------------------------------------------------
# Connections survive threads, not forks: a child process must never use a connection
# its parent opened (SQLite's locks would be wrong), nor close it (that could drop the
# parent's locks). After a fork, inherited connections are parked here and left alone.
# --------------------------------------------------------------------------------------
#: connections inherited from the parent process, never used nor closed
parked_after_fork: list[sqlite3.Connection] = []


#: how many forks lie between the program's first process and this one: a pool that
#: remembers another number was opened by a parent process
forks = 0


def _after_fork_in_child() -> None:
    global _shm_lock, forks
    forks += 1
    _shm_lock = threading.Lock()  # (another thread may have held it at the fork)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# With file events, a quiet watcher still reads the counter this often, in case a write
# went unnoticed (a file replaced under the queue, a filesystem without events).
_QUIET_BACKUP = 5.0


class _DataVersion:
    """The watcher's probe: ``PRAGMA data_version`` on a connection of its own, and file
    events for the database and its WAL where the system has them.

    The number changes whenever another connection commits, in this process or another;
    a connection that never writes therefore sees every commit. It reads the WAL index in
    shared memory: no table is touched, and no snapshot is held between reads. Every
    commit writes the WAL (or, without one, the database file), so a write to either is
    what a quiet watcher waits for.
    """

    def __init__(self, path: str, key: EncryptionKey | None = None) -> None:
        # mode=rw: a database that has gone away is an error here, never a new empty file.
        self._conn = connect(
            key,
            f"{Path(path).as_uri()}?mode=rw",
            uri=True,
            timeout=1.0,
            isolation_level=None,
            check_same_thread=False,
        )
        self._cursor = self._conn.cursor()
        self.read()  # opens the WAL, so that it exists to be watched
        self._events = file_events.watch([path, f"{path}-wal"])

    def read(self) -> int:
        # fetchall: the statement runs to its end, so no read transaction stays open.
        return int(self._cursor.execute(sql.DATA_VERSION).fetchall()[0][0])

    def wait(self) -> None:
        events = self._events
        if events is not None and events.working:
            events.wait(_QUIET_BACKUP)
        else:
            time.sleep(POLL_IDLE)

    def touched(self) -> bool:
        return self._events is not None and self._events.touched()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
        self._conn.close()


# Weak: a watcher lives while a queue object on its file holds it (see signal_for).
_watchers: weakref.WeakValueDictionary[str, Watcher] = weakref.WeakValueDictionary()
_watchers_lock = threading.Lock()
_parked_watchers: list[Watcher] = []  # a parent's, after fork: their probes stay untouched


def watcher_for(path: str, key: EncryptionKey | None = None) -> Watcher:
    """This process's watcher of the database at ``path`` (a real path; ``key``: its
    encryption key)."""
    with _watchers_lock:
        watcher = _watchers.get(path)
        if watcher is None or watcher.pid != os.getpid():
            if watcher is not None:
                _parked_watchers.append(watcher)
            watcher = Watcher(os.path.basename(path), functools.partial(_DataVersion, path, key))
            _watchers[path] = watcher
        return watcher


def _error_name(exc: sqlite3.Error) -> str:
    return str(getattr(exc, "sqlite_errorname", "") or "")


def not_a_database(exc: sqlite3.Error) -> bool:
    """Whether SQLite found no database in the file at all (rather than a damaged one)."""
    return _error_name(exc).startswith("SQLITE_NOTADB") or "not a database" in str(exc).lower()


def classify(exc: sqlite3.Error, path: str) -> StorageError:
    """Turn a sqlite3 exception into a StorageError that says what to do."""
    text = str(exc)
    name = _error_name(exc)
    lowered = text.lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in lowered:
        return StorageError(
            f"database {path!r} is locked by another connection ({text})", ErrorKind.LOCKED
        )
    if name.startswith("SQLITE_TOOBIG") or "too big" in lowered:
        return StorageError(
            f"a value is too large for {path!r} ({text}): SQLite keeps at most "
            "1,000,000,000 bytes in one payload (its SQLITE_MAX_LENGTH); store large data "
            "elsewhere and enqueue a reference to it; nothing was written",
            ErrorKind.INVALID_INPUT,
        )
    if name.startswith("SQLITE_FULL") or "disk is full" in lowered:
        return StorageError(
            f"cannot write to {path!r}: the disk or file size limit is full ({text}); "
            "free space and retry, nothing was written",
            ErrorKind.DISK_FULL,
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in lowered:
        problem = access_problem(path) or "check the file and directory permissions"
        return StorageError(
            f"cannot write to {path!r}: it is read-only ({text}); {problem}",
            ErrorKind.READ_ONLY,
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in lowered:
        denied = access_problem(path, writing=False)
        if denied is not None:
            return StorageError(f"cannot open {path!r} ({text}): {denied}", ErrorKind.STORAGE)
    if not_a_database(exc):
        # The header is not SQLite's: an encrypted file opened without its key, another
        # kind of file, or one destroyed from its first page, which no salvage can read.
        return StorageError(
            f"{path!r} is not an SQLite database; if this file is encrypted: give its key "
            f"({encryption.GIVE_KEY}); else check the path (a queue file whose "
            "header was overwritten can only be restored from a backup)",
            ErrorKind.CORRUPT,
        )
    if name.startswith("SQLITE_CORRUPT") or "malformed" in lowered:
        return StorageError(
            f"database {path!r} is damaged ({text}); check it "
            f"with 'sqqueue check {path}', then copy every readable message into a new "
            f"file with 'sqqueue salvage {path} NEW.db' (or restore a backup)",
            ErrorKind.CORRUPT,
        )
    if name.startswith("SQLITE_IOERR") or "i/o error" in lowered:
        # SQLite reports a write refused by the file size limit (EFBIG) as an I/O error,
        # and ENOSPC as one too on some paths: look at the limits before blaming the disk.
        limit = _space_limit(path)
        if limit is not None:
            return StorageError(
                f"cannot write to {path!r}: {limit} ({text}); free space and retry, "
                "nothing was written",
                ErrorKind.DISK_FULL,
            )
        return StorageError(
            f"input/output error on {path!r} ({text}); the disk may be full, failing "
            "or gone; nothing was written",
            ErrorKind.STORAGE,
        )
    return StorageError(f"database error on {path!r}: {text}", ErrorKind.STORAGE)


# access() as the process (its effective user and, on Linux, its capabilities) acts.
_EFFECTIVE_IDS = os.access in os.supports_effective_ids


def writable(path: str) -> bool:
    """Whether this process may write the database file, as the kernel decides for its
    effective user (and a thread's capabilities). Asked, never tried by opening it:
    closing any descriptor of a file drops every lock the process holds on it (POSIX),
    SQLite's included."""
    if path == ":memory:" or path.startswith("file:"):
        return True
    try:
        return os.access(path, os.W_OK, effective_ids=_EFFECTIVE_IDS)
    except OSError:
        return False


def access_problem(path: str, writing: bool = True) -> str | None:
    """What the permissions keep this process from doing with the database ``path`` and
    its -wal and -shm files (reading only, unless ``writing``), in words with what to do;
    None if they allow it."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    user = f"this user (uid {os.geteuid()})" if hasattr(os, "geteuid") else "this user"
    fix = "run as the user that owns the queue file, or give this user access"
    wanted = [(os.R_OK, "read")] + ([(os.W_OK, "write")] if writing else [])
    for mode, verb in wanted:
        for name in (path, f"{path}-wal", f"{path}-shm"):
            try:
                info = os.stat(name)
            except OSError:
                continue
            if not os.access(name, mode, effective_ids=_EFFECTIVE_IDS):
                return (
                    f"{user} may not {verb} {name} (owner uid {info.st_uid}, mode "
                    f"{stat.S_IMODE(info.st_mode):04o}); {fix}"
                )
    directory = os.path.dirname(os.path.abspath(path))
    companions = not os.path.exists(f"{path}-shm")
    if (writing or companions) and not os.access(
        directory, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE_IDS
    ):
        return (
            f"{user} may not create files in {directory}, where SQLite keeps the database's "
            f"-wal and -shm files; {fix}"
        )
    return None


def _space_limit(path: str) -> str | None:
    """Why a write may have failed for lack of space, or None if space looks fine."""
    try:
        import resource  # POSIX only

        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            sizes = [os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p)]
            # A write that would cross the limit fails: the file is within a page or
            # two of it, or the write itself was large.
            if sizes and max(sizes) + 16 * 1024 * 1024 >= soft:
                return f"the file size limit is reached (RLIMIT_FSIZE = {soft} bytes)"
    except (ImportError, OSError, ValueError):
        pass
    try:
        stats = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except (OSError, AttributeError):
        return None
    if stats.f_bavail * stats.f_frsize < 1024 * 1024:
        return "the disk is full"
    return None


def prepare_path(db_path: str | os.PathLike[str], create: bool = True) -> tuple[str, bool]:
    """Check the path and, if ``create``, create the file owner-only. Returns (absolute
    path, is_memory)."""
    path = os.fspath(db_path)
    if not isinstance(path, str) or not path:
        raise ValueError("db_path must be a non-empty path to the database file")
    if path == ":memory:":
        return path, True
    if "\x00" in path:
        raise ValueError("db_path contains a NUL character")
    target = Path(path)
    if target.is_dir():
        raise ValueError(
            f"db_path {path!r} is a directory; give a file path such as "
            f"{os.path.join(path, 'queue.db')!r}"
        )
    # Through symlinks: the file is created (and SQLite puts its -wal and -shm) where
    # the link points, so that is where the mode is set.
    real = Path(os.path.realpath(path))
    parent = real.parent
    if not parent.is_dir():
        where = f" (where the link {path!r} points)" if target.is_symlink() else ""
        raise ValueError(f"cannot create {path!r}: directory {str(parent)!r}{where} does not exist")
    if not real.exists():
        if not create:
            raise StorageError(f"no database at {path!r}", ErrorKind.NOT_FOUND)
        try:
            # Created here, not by SQLite, so it is readable by its owner only; SQLite gives
            # the -wal and -shm files the same permissions.
            fd = os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ValueError(f"cannot create {path!r}: {exc.strerror}") from exc
    info = real.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"db_path {path!r} is not a regular file")
    if create and info.st_size == 0 and info.st_mode & 0o077:
        # An empty file (made by `touch`, say) becomes the database now: owner-only, like
        # one sqqueue creates, and so its -wal and -shm.
        with contextlib.suppress(OSError):
            os.chmod(real, 0o600)
            info = real.stat()
    _warn_if_shared(path, real, info.st_mode)
    # Absolute: connections opened later (the pool grows on demand) and the look at the
    # file's identity must reach this file after a chdir, not one of the same name there.
    return os.path.abspath(path), False


_warned_shared: set[str] = set()
_warned_lock = threading.Lock()


def _warn_if_shared(path: str, real: Path, mode: int) -> None:
    """Log once per file and process when others may read the queue file: SQLite gives
    its -wal and -shm files the same mode, so they can read every message too."""
    if not mode & 0o044:
        return
    with _warned_lock:
        if str(real) in _warned_shared:
            return
        _warned_shared.add(str(real))
    logger.warning(
        "%s is readable by other users (mode %04o), and so are its -wal and -shm files: "
        "run 'chmod 600 %s' unless they are meant to read the queue",
        path,
        stat.S_IMODE(mode),
        path,
    )


# A file's state, as far as a reader that bypasses SQLite's locking depends on it: the
# database's inode, size, modification and change times, and the -wal, -shm and -journal
# sizes (-1 when absent). A writer creates its -wal (or, in rollback mode, its -journal)
# before it changes the database, so a read that overlapped a write sees the state change.
FileState = tuple[int, int, int, int, int, int, int]

_COMPANIONS = ("-wal", "-shm", "-journal")


def file_identity(path: str) -> tuple[int, int] | None:
    """Which file ``path`` names now (device and inode, through symlinks); None if none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def file_state(path: str) -> FileState:
    """The state of the database ``path`` and its -wal, -shm and -journal (see FileState)."""
    info = os.stat(path)
    sizes = []
    for suffix in _COMPANIONS:
        try:
            sizes.append(os.stat(path + suffix).st_size)
        except FileNotFoundError:
            sizes.append(-1)
    return (
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        sizes[0],
        sizes[1],
        sizes[2],
    )


def _wal_mode(path: str) -> bool:
    """Whether the database is in WAL mode, as far as its header tells.

    A plain file says so in bytes 18 and 19 (both 2). SQLCipher encrypts the whole header
    (the first 16 bytes are its salt), so an encrypted file is taken to be in WAL mode:
    sqqueue opens every file in WAL mode and leaves it so. (The caller checks the state of
    the files after each immutable read, which also catches a writer in rollback mode.)
    An empty file is a new database, in no mode yet.
    """
    with open(path, "rb") as file:
        header = file.read(20)
    if len(header) < 20:
        return False
    if not header.startswith(encryption.SQLITE_MAGIC):
        return True
    return header[18] == 2 and header[19] == 2


def _hot_journal(path: str) -> bool:
    """Whether ``path`` has a -journal SQLite may have to roll back: one that starts with
    a non-zero byte (SQLite's own test: a journal it is done with is deleted, emptied or
    has its header zeroed), left by a writer in rollback mode that died, or still being
    written by a live one."""
    try:
        with open(f"{path}-journal", "rb") as file:
            first = file.read(1)
    except FileNotFoundError:
        return False
    return first not in (b"", b"\x00")


def open_read_only(
    path: str, timeout: float = 5.0, key: str | bytes | EncryptionKey | None = None
) -> tuple[sqlite3.Connection, FileState | None]:
    """A connection that reads ``path`` without changing anything on disk, and the state
    its reads depend on (None: SQLite's own locking keeps them consistent).

    SQLite reads a WAL database through its -shm file and creates the -shm and -wal when
    they are missing, even for a read-only connection, which cannot remove them again;
    and it cannot create them in a directory the reader may not write. A reader must not
    leave files behind (another user's process might then be unable to open them). So
    when there is no -shm and no -wal (or an empty one), which means nobody has the
    database open and all of it is in the main file, it is read as immutable: the caller
    checks with :func:`file_state` after each read that nothing changed meanwhile (a
    writer that starts creates the -wal first), and reads again if it did. An encrypted
    file is read so too (its header, which tells the journal mode, is encrypted: see
    ``_wal_mode``), but never a file with a hot -journal.

    ``key``: the file's encryption key (else the one in the environment, if any).
    """
    resolved = encryption.resolve_key(key)
    try:
        state = file_state(path)
        wal_size, shm_size = state[4], state[5]
        # A hot -journal holds what the file looked like before a writer's unfinished
        # transaction: only SQLite's own locking reads such a file right.
        hot = _hot_journal(path)
        idle_wal = shm_size < 0 and not hot and _wal_mode(path)
    except OSError as exc:
        denied = access_problem(path, writing=False)
        raise StorageError(denied or f"cannot read {path!r}: {exc.strerror}") from exc
    snapshot: FileState | None = None
    query = "mode=ro"
    if idle_wal:
        if wal_size > 0:
            raise StorageError(
                f"cannot read {path!r} without changing it: {path}-wal holds changes not yet "
                f"copied into the database and there is no {path}-shm (a copied or "
                f"half-removed file); open the queue once for use, or run 'sqqueue "
                f"checkpoint {path}', then read it again",
                ErrorKind.READ_ONLY,
            )
        query = "mode=ro&immutable=1"
        snapshot = state
    uri = f"{Path(path).resolve().as_uri()}?{query}"
    refuse_mismatch(path, resolved)
    try:
        conn = connect(
            resolved,
            uri,
            uri=True,
            timeout=timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=128,
        )
    except _errors as exc:
        raise classify(exc, path) from exc
    if resolved is not None or hot:
        # A first read: a wrong key shows here, and so does a hot -journal, which a
        # read-only connection cannot roll back.
        try:
            conn.execute(sql.READ_SCHEMA).fetchall()
        except _errors as exc:
            conn.close()
            if resolved is not None and not_a_database(exc):
                raise StorageError(encryption.wrong_key(path), ErrorKind.INVALID_INPUT) from None
            error = classify(exc, path)
            if hot and error.kind is ErrorKind.READ_ONLY:
                raise StorageError(
                    f"cannot read {path!r} without changing it: {path}-journal holds a "
                    "transaction a writer left unfinished, which must be rolled back "
                    "first; open the queue once for use, then read it again",
                    ErrorKind.READ_ONLY,
                ) from exc
            raise error from exc
    return conn, snapshot


# Which driver each file is open with in this process, by how many queue objects:
# {real path: {keyed: count}}. sqlite3 and sqlcipher3 are two SQLite libraries, each
# with its own table of the process's locks: a connection of one, closed, drops the POSIX
# locks the other's connections hold on the file (they belong to the process), and the
# last of those to close then takes the file for unused and removes its WAL. So a file
# open with one is never opened writable with the other.
_drivers: dict[str, dict[bool, int]] = {}
_drivers_lock = threading.Lock()


def use_driver(path: str, keyed: bool) -> None:
    """Count a queue object opening ``path`` with a key (SQLCipher) or without (sqlite3);
    raise StorageError (INVALID_INPUT), before any connection, when this process has it
    open with the other. Undone by ``release_driver``."""
    real = os.path.realpath(path)
    with _drivers_lock:
        counts = _drivers.setdefault(real, {True: 0, False: 0})
        if counts[not keyed]:
            if keyed:
                problem = (
                    f"{path!r} is open in this process without a key (a plain file): "
                    "open it without a key"
                )
            else:
                problem = (
                    f"{path!r} is open in this process with an encryption key: open it "
                    "with the same key"
                )
            raise StorageError(problem, ErrorKind.INVALID_INPUT)
        counts[keyed] += 1


def release_driver(path: str, keyed: bool) -> None:
    """Uncount what ``use_driver`` counted."""
    real = os.path.realpath(path)
    with _drivers_lock:
        counts = _drivers.get(real)
        if counts is not None and counts[keyed]:
            counts[keyed] -= 1
            if not any(counts.values()):
                del _drivers[real]


def refuse_mismatch(path: str, key: EncryptionKey | None) -> None:
    """Refuse, before SQLite touches it, a plain file opened with a key (and an
    encrypted one opened without)."""
    problem = encryption.mismatch(path, key)
    if problem is not None:
        raise StorageError(problem, ErrorKind.INVALID_INPUT)


def is_connection(conn: Any) -> bool:
    """Whether ``conn`` is a connection of sqlite3 (or of sqlcipher3, its copy)."""
    return isinstance(conn, sqlite3.Connection) or (
        len(_errors) > 1 and isinstance(conn, encryption.driver().Connection)
    )


def undecodable_text(exc: sqlite3.Error) -> bool:
    """Whether sqlite3 (or sqlcipher3) failed to read a TEXT value as UTF-8."""
    return type(exc).__name__ == "OperationalError" and str(exc).startswith(
        "Could not decode to UTF-8"
    )


def lenient_text(raw: bytes) -> str:
    """TEXT as str, with bytes that are not UTF-8 replaced by U+FFFD."""
    return raw.decode("utf-8", "replace")


# The -shm files read by wal_progress, each through a descriptor kept open while that
# file exists: this process's connections hold POSIX locks on the -shm (that they have
# the database open, which reader is where, who writes), and closing any descriptor of
# a file drops every lock the process holds on it. Other processes would then take the
# WAL index for unused and rebuild it under those connections. A -shm that was removed
# or replaced (its last connection closed) has no locks left to keep: its descriptor is
# closed then. {-shm path: (inode, descriptor)}
_shm_files: dict[str, tuple[int, int]] = {}
_shm_lock = threading.Lock()


def _read_shm(shm: str, size: int) -> bytes:
    """The first ``size`` bytes of the -shm file ``shm``, read without closing it."""
    with _shm_lock:
        for name, (inode, fd) in list(_shm_files.items()):
            try:
                current = os.stat(name).st_ino
            except OSError:
                current = -1
            if current != inode:
                del _shm_files[name]
                os.close(fd)
        entry = _shm_files.get(shm)
        if entry is None:
            fd = os.open(shm, os.O_RDONLY)
            entry = _shm_files[shm] = (os.fstat(fd).st_ino, fd)
        return os.pread(entry[1], size, 0)


def wal_progress(path: str, wal_bytes: int) -> tuple[int, int]:
    """(frames in the WAL, frames not yet copied into the database), read from the
    header of the -shm file without writing anything (https://sqlite.org/walformat.html:
    two identical copies of the header, mxFrame at byte 16, then nBackfill at byte 96, in
    the machine's byte order); (0, 0) when there is no WAL index to read."""
    if not wal_bytes:
        return 0, 0
    try:
        head = _read_shm(f"{path}-shm", 100)
    except OSError:
        return 0, 0
    if len(head) < 100 or head[:48] != head[48:96]:
        return 0, 0  # not initialised, or being rewritten right now
    version, frames = struct.unpack_from("=I", head, 0)[0], struct.unpack_from("=I", head, 16)[0]
    if version != 3007000 or not head[12]:
        return 0, 0
    copied = struct.unpack_from("=I", head, 96)[0]
    return frames, max(frames - copied, 0)
