"""Encryption at rest: SQLCipher files hold no plaintext, keys are checked and never shown,
and encrypt/decrypt/rekey lose nothing, even when killed."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sqqueue import ErrorKind, QueueError, SQLiteQueue, connect, encryption
from sqqueue.encryption import EncryptionError, EncryptionKey

KEY = "correct horse battery staple"
MARKER = "PLAINTEXT-MARKER-7f3a"


def _files(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


def _assert_no_marker(path: Path) -> None:
    files = _files(path)
    assert files
    for file in files:
        assert MARKER.encode() not in file.read_bytes(), file.name


def _total(queue: SQLiteQueue | Any) -> int:
    stats = queue.stats().unwrap()
    return int(stats.pending + stats.delayed + stats.waiting + stats.processing)


def _fill(path: Path, count: int, key: str | bytes | None = KEY, size: int = 0) -> None:
    with SQLiteQueue(path, "jobs", encryption_key=key) as queue:
        assert queue.enqueue_batch([{"m": MARKER, "pad": "x" * size}] * count).is_ok()


def test_no_plaintext_in_file_wal_or_shm(tmp_path: Path) -> None:
    path = tmp_path / "secret.db"
    queue = SQLiteQueue(path, "jobs", encryption_key=KEY)
    for n in range(200):
        assert queue.enqueue({"m": MARKER, "n": n}, dedup_key=f"{MARKER}-{n}").is_ok()
    message = queue.dequeue().unwrap()
    assert message is not None and message.payload["m"] == MARKER
    assert queue.fail_message(message, error=MARKER).is_ok()
    # Open: the WAL and the shared-memory file exist and hold the recent writes.
    assert {p.name for p in _files(path)} >= {"secret.db", "secret.db-wal", "secret.db-shm"}
    _assert_no_marker(path)
    queue.close()
    _assert_no_marker(path)
    # The same queue on a plain file does hold the marker: the search can find it.
    _fill(tmp_path / "plain.db", 1, key=None)
    assert MARKER.encode() in b"".join(p.read_bytes() for p in _files(tmp_path / "plain.db"))


def test_raw_key_and_passphrase_from_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = os.urandom(32)
    path = tmp_path / "raw.db"
    _fill(path, 3, key=raw)
    monkeypatch.setenv(encryption.ENV_KEY, f"x'{raw.hex()}'")
    with connect(f"sqlite:///{path}", "jobs") as queue:
        assert _total(queue) == 3
    monkeypatch.delenv(encryption.ENV_KEY)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv(encryption.ENV_KEY_FILE, str(key_file))
    with connect(tmp_path / "file.db", "jobs") as queue:
        assert queue.enqueue(MARKER).is_ok()
    monkeypatch.delenv(encryption.ENV_KEY_FILE)
    with SQLiteQueue(tmp_path / "file.db", "jobs", encryption_key=KEY) as queue:
        assert _total(queue) == 1


def test_key_file_readable_by_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o640)
    monkeypatch.setenv(encryption.ENV_KEY_FILE, str(key_file))
    with pytest.raises(ValueError, match="chmod 600") as info:
        SQLiteQueue(tmp_path / "q.db", "jobs")
    assert KEY not in str(info.value)
    assert not (tmp_path / "q.db").exists()


@pytest.mark.parametrize("bad", [b"short", "", 42])
def test_bad_keys_are_refused_at_construction(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match=r"encryption key|encryption_key"):
        SQLiteQueue(tmp_path / "q.db", "jobs", encryption_key=bad)  # type: ignore[arg-type]


def _snapshot(path: Path) -> list[tuple[str, str, int]]:
    return sorted(
        (p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in _files(path)
    )


@pytest.mark.parametrize(
    ("encrypted", "key", "expected"),
    [
        (True, "wrong key", "wrong key or not an encrypted sqqueue database"),
        (True, None, "this file is encrypted: give its key (encryption_key="),
        (False, KEY, "wrong key or not an encrypted sqqueue database"),
    ],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_key_mismatch_is_a_clear_error_that_changes_nothing(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    encrypted: bool,
    key: str | None,
    expected: str,
    read_only: bool,
) -> None:
    path = tmp_path / "q.db"
    _fill(path, 5, key=KEY if encrypted else None)
    before = _snapshot(path)
    time.sleep(0.01)  # an mtime written by a failed open would differ
    with pytest.raises(QueueError) as info:
        SQLiteQueue(path, "jobs", encryption_key=key, read_only=read_only)
    assert expected in str(info.value)
    assert "file is not a database" not in str(info.value)
    assert _snapshot(path) == before
    # SQLCipher's own log is silenced: nothing on stderr.
    assert "ERROR" not in capfd.readouterr().err


def test_missing_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'sqqueue\[encryption\]'"):
        SQLiteQueue(tmp_path / "q.db", "jobs", encryption_key=KEY)
    assert not (tmp_path / "q.db").exists()


def test_key_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "q.db"
    queue = SQLiteQueue(path, "jobs", encryption_key=KEY)
    queue.enqueue({"m": 1})
    queue.dequeue()
    shown = [repr(queue), str(queue.settings), repr(queue.stats()), repr(queue.setting_sources)]
    queue.close()
    for bad in ("wrong " + KEY, None):
        with pytest.raises(QueueError) as info:
            SQLiteQueue(path, "jobs", encryption_key=bad)
        shown += [str(info.value), repr(info.value)]
    key = EncryptionKey(KEY)
    shown += [repr(key), str(key), repr(encryption.resolve_key(KEY))]
    report = encryption.rekey(path, KEY, "new " + KEY)
    shown.append(repr(report))
    for text in [*shown, caplog.text]:
        assert KEY not in text
        assert KEY.replace("'", "''") not in text


def test_async_queue_and_worker_open_encrypted_files(tmp_path: Path) -> None:
    import asyncio

    from sqqueue.aio import AsyncSQLiteQueue

    path = tmp_path / "q.db"

    async def run() -> int:
        queue = AsyncSQLiteQueue(path, "jobs", encryption_key=KEY)
        try:
            assert (await queue.enqueue(MARKER)).is_ok()
            stats = (await queue.stats()).unwrap()
            return stats.pending
        finally:
            await queue.close()

    assert asyncio.run(run()) == 1
    _assert_no_marker(path)


# -- encrypt, decrypt, rekey --------------------------------------------------------------


def test_encrypt_decrypt_rekey_round_trip(tmp_path: Path) -> None:
    plain, secret, back = tmp_path / "plain.db", tmp_path / "secret.db", tmp_path / "back.db"
    _fill(plain, 120, key=None)
    with SQLiteQueue(plain, "jobs") as queue:
        assert queue.dequeue().unwrap() is not None
    seen: list[tuple[str, int]] = []
    report = encryption.encrypt(plain, secret, KEY, progress=lambda s, n: seen.append((s, n)))
    assert report.tables  # every table, counted in both files
    assert [s for s, _ in seen] == ["copied", "verified"]
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    _assert_no_marker(secret)
    with SQLiteQueue(secret, "jobs", encryption_key=KEY) as queue:
        assert _total(queue) == 120
    encryption.rekey(secret, KEY, b"k" * 32)
    with pytest.raises(QueueError, match="wrong key"):
        SQLiteQueue(secret, "jobs", encryption_key=KEY)
    encryption.decrypt(secret, back, b"k" * 32)
    with SQLiteQueue(back, "jobs") as queue:
        assert _total(queue) == 120
        assert queue.dequeue().unwrap() is not None  # the lease taken before is kept
    with pytest.raises(EncryptionError, match="exists already"):
        encryption.encrypt(plain, secret, KEY)
    with pytest.raises(EncryptionError, match="wrong key"):
        encryption.decrypt(secret, tmp_path / "x.db", KEY)


def test_rekey_through_a_symlink_replaces_the_file_behind_it(tmp_path: Path) -> None:
    """app/q.db a link to data/q.db (a volume): the real file is re-keyed in its own
    directory and the link kept, not the link replaced by a copy and the volume's file
    left scrambled."""
    (tmp_path / "data").mkdir()
    (tmp_path / "app").mkdir()
    real, link = tmp_path / "data" / "q.db", tmp_path / "app" / "q.db"
    _fill(real, 30, key=KEY)
    link.symlink_to(Path("..") / "data" / "q.db")
    encryption.rekey(link, KEY, b"k" * 32)
    assert link.is_symlink() and link.resolve() == real.resolve()
    with SQLiteQueue(real, "jobs", encryption_key=b"k" * 32) as queue:
        assert _total(queue) == 30
    assert not (tmp_path / "app" / "q.db.partial").exists()


def test_a_file_open_with_one_driver_is_not_opened_writable_with_the_other(
    tmp_path: Path,
) -> None:
    """sqlite3 and SQLCipher keep their locks apart: a refused open with the other driver
    (no key for an encrypted file open here, a key for a plain one) would drop the open
    queue's locks when its probe closed, and that queue's WAL would be removed under it
    (it reported the file damaged). Refused before any connection; the open one goes on."""
    secret, plain = tmp_path / "secret.db", tmp_path / "plain.db"
    with SQLiteQueue(secret, "jobs", encryption_key=KEY) as keyed:
        assert keyed.enqueue("before").is_ok()
        with pytest.raises(QueueError, match="open in this process with an encryption key"):
            SQLiteQueue(secret, "jobs")
        for n in range(50):
            assert keyed.enqueue(n).is_ok(), n
        assert Path(f"{secret}-wal").exists()
        assert _total(keyed) == 51
    with SQLiteQueue(plain, "jobs") as unkeyed:
        with pytest.raises(QueueError, match="open in this process without a key"):
            SQLiteQueue(plain, "jobs", encryption_key=KEY)
        assert unkeyed.enqueue("still").is_ok()
    with SQLiteQueue(secret, "jobs", encryption_key=KEY) as again:  # closed: counted no more
        assert _total(again) == 51


_COPY_CHILD = textwrap.dedent(
    """
    import sys
    from sqqueue import encryption
    action, source, target = sys.argv[1:4]
    if action == "encrypt":
        encryption.encrypt(source, target, "k2")
    else:
        encryption.rekey(source, "k1", "k2")
    """
)


def _wait_for_copy(child: subprocess.Popen[bytes], partial: Path, why: str) -> None:
    """Wait (at most a minute) until the copy ``child`` runs has written to ``partial``;
    ``why`` is the failure if the child ends first."""
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0):
        assert child.poll() is None, why
        assert time.monotonic() < deadline
        time.sleep(0.005)


def _content(path: Path, key: str | None) -> str:
    """A digest of every table's rows and the schema, read with ``key``."""
    conn = encryption.connect(str(path), EncryptionKey(key) if key else None)
    try:
        digest = hashlib.sha256()
        for name, schema in conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name"):
            digest.update(repr((name, schema)).encode())
            if schema and schema.startswith("CREATE TABLE"):
                rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
                digest.update(repr(sorted(map(repr, rows))).encode())
        return digest.hexdigest()
    finally:
        conn.close()


def _journal_mode(path: Path, key: str) -> str:
    conn = encryption.connect(str(path), EncryptionKey(key))
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("action", ["encrypt", "rekey"])
def test_killed_copy_loses_nothing(tmp_path: Path, action: str) -> None:
    source = tmp_path / "source.db"
    key = None if action == "encrypt" else "k1"
    _fill(source, 4000, key=key, size=4000)  # ~16 MB: the copy takes a while
    target = tmp_path / "target.db" if action == "encrypt" else source
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    content = _content(source, key)
    partial = Path(f"{target}.partial")
    child = subprocess.Popen([sys.executable, "-c", _COPY_CHILD, action, str(source), str(target)])
    try:
        _wait_for_copy(child, partial, "the copy ended before it could be interrupted")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    if action == "encrypt":
        assert hashlib.sha256(source.read_bytes()).hexdigest() == before
        assert not target.exists()
    # rekey held the file out of WAL mode (see encryption._hold), which rewrote its first
    # page: the rows are the same, read with the old key.
    assert _content(source, key) == content
    with SQLiteQueue(source, "jobs", encryption_key=key) as queue:
        assert _total(queue) == 4000
    if action == "rekey":
        assert _journal_mode(source, "k1") == "wal"  # set again by the queue that opened it
    # Run again: the leftover partial copy is replaced, and the copy completes.
    if action == "encrypt":
        encryption.encrypt(source, target, "k2")
    else:
        encryption.rekey(source, "k1", "k2")
    assert not partial.exists()
    with SQLiteQueue(target, "jobs", encryption_key="k2") as queue:
        assert _total(queue) == 4000


# -- rekey of a file in use ---------------------------------------------------------------

# Raw keys: a passphrase costs a key derivation (~0.2 s) on every connection opened.
OLD_RAW, NEW_RAW = "x'" + "0a" * 32 + "'", "x'" + "0b" * 32 + "'"


def _payloads(path: Path, key: str) -> list[Any]:
    with SQLiteQueue(path, "jobs", encryption_key=key, read_only=True) as queue:
        return sorted(str(m["payload"]) for m in queue.list_messages("pending").unwrap())


# Exits 0 if no process holds the database open: SQLite's shared lock on the database
# file (the bytes from 2**30 + 2 on) is what other processes see of a connection.
_NOBODY_HAS_IT_OPEN = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 2**30 + 2)
    except OSError:
        sys.exit(1)
    """
)


def _nobody_has_it_open(path: Path) -> bool:
    probe = [sys.executable, "-c", _NOBODY_HAS_IT_OPEN, str(path)]
    return subprocess.run(probe, check=False).returncode == 0


def test_rekey_is_refused_while_a_queue_is_open_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open queue keeps working and loses nothing, its locks seen by other processes
    as before; the file still opens with the old key. Once the queue is closed, rekey
    succeeds and every message reads back."""
    monkeypatch.setattr(encryption, "IN_USE_WAIT", 0.2)
    path = tmp_path / "q.db"
    queue = SQLiteQueue(path, "jobs", encryption_key=OLD_RAW)
    try:
        assert queue.enqueue("before").is_ok()
        assert not _nobody_has_it_open(path)
        with pytest.raises(EncryptionError, match="is in use") as info:
            encryption.rekey(path, OLD_RAW, NEW_RAW)
        assert info.value.kind is ErrorKind.LOCKED
        assert "stop every process using it" in str(info.value)
        assert not _nobody_has_it_open(path)
        assert queue.enqueue("after").is_ok()
        assert _total(queue) == 2
    finally:
        queue.close()
    assert sorted(p.name for p in _files(path)) == ["q.db"]  # no copy was started
    assert _nobody_has_it_open(path)
    assert _payloads(path, OLD_RAW) == ["after", "before"]
    assert _journal_mode(path, OLD_RAW) == "wal"
    encryption.rekey(path, OLD_RAW, NEW_RAW)
    assert _payloads(path, NEW_RAW) == ["after", "before"]
    assert _journal_mode(path, NEW_RAW) == "wal"
    with pytest.raises(QueueError, match="wrong key"):
        SQLiteQueue(path, "jobs", encryption_key=OLD_RAW)


def test_rekey_that_fails_before_the_replace_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.db"
    _fill(path, 5, key=OLD_RAW)

    def broken(*args: Any) -> None:
        raise OSError("the disk failed")

    monkeypatch.setattr(encryption, "_fsync", broken)  # after the copy, before the replace
    with pytest.raises(OSError, match="the disk failed"):
        encryption.rekey(path, OLD_RAW, NEW_RAW)
    assert _journal_mode(path, OLD_RAW) == "wal"  # back as it was
    assert not Path(f"{path}-journal").exists()
    assert _payloads(path, OLD_RAW) == [str({"m": MARKER, "pad": ""})] * 5
    monkeypatch.undo()
    encryption.rekey(path, OLD_RAW, NEW_RAW)
    assert len(_payloads(path, NEW_RAW)) == 5


# A process holding a queue open: it enqueues what it reads on stdin, line by line, and
# answers each; it closes the queue at the end of its input. Like an application, it
# also opens other queue objects on the file meanwhile (which must not drop its locks).
_APPLICATION = textwrap.dedent(
    """
    import sys
    from sqqueue import SQLiteQueue
    path, key = sys.argv[1:3]
    with SQLiteQueue(path, "jobs", encryption_key=key) as queue:
        SQLiteQueue(path, "emails", encryption_key=key).close()
        with SQLiteQueue(path, "jobs", encryption_key=key, read_only=True) as reader:
            reader.stats().unwrap()
        print("open", flush=True)
        for line in sys.stdin:
            queue.enqueue(line.strip()).unwrap()
            print("enqueued", flush=True)
    """
)


@pytest.mark.slow
def test_rekey_command_is_refused_while_another_process_has_the_file_open(
    tmp_path: Path,
) -> None:
    key_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    for file, text in ((key_file, OLD_RAW), (new_file, NEW_RAW)):
        file.write_text(text)
        file.chmod(0o600)
    path = tmp_path / "q.db"
    _fill(path, 3, key=OLD_RAW)
    app = subprocess.Popen(
        [sys.executable, "-c", _APPLICATION, str(path), OLD_RAW],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdin is not None and app.stdout is not None
        assert app.stdout.readline().strip() == "open"
        refused = _cli("--key-file", key_file, "rekey", path, "--new-key-file", new_file)
        assert refused.returncode == 1, refused.stderr
        assert "is in use" in refused.stderr and "stop every process" in refused.stderr
        assert "Traceback" not in refused.stderr and "0a" * 32 not in refused.stderr
        app.stdin.write("after the refusal\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "enqueued"
    finally:
        app.communicate(timeout=60)
    assert app.returncode == 0
    assert len(_payloads(path, OLD_RAW)) == 4
    rekeyed = _cli("--key-file", key_file, "rekey", path, "--new-key-file", new_file)
    assert rekeyed.returncode == 0, rekeyed.stderr
    payloads = _payloads(path, NEW_RAW)
    assert len(payloads) == 4 and "after the refusal" in payloads


@pytest.mark.slow
def test_a_connection_opened_during_rekey_finds_no_database(tmp_path: Path) -> None:
    """A process that opens the file while rekey copies it waits for the lock, then finds
    the file it opened (now replaced) unreadable: a key error, never a write where nobody
    reads."""
    source = tmp_path / "source.db"
    _fill(source, 4000, key="k1", size=4000)  # ~16 MB: the copy takes a while
    partial = Path(f"{source}.partial")
    child = subprocess.Popen([sys.executable, "-c", _COPY_CHILD, "rekey", str(source), "x"])
    try:
        _wait_for_copy(child, partial, "the copy ended before the file could be opened")
        late = encryption.connect(str(source), EncryptionKey("k1"), timeout=60)
        try:
            assert child.poll() is None  # opened before the copy replaced the file
            with pytest.raises(encryption.driver_errors(), match="not a database"):
                late.execute("SELECT count(*) FROM jobs").fetchall()
        finally:
            late.close()
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0
    with SQLiteQueue(source, "jobs", encryption_key="k2") as queue:
        assert _total(queue) == 4000


def test_plain_queue_is_refused_a_key_on_memory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no file to encrypt"):
        SQLiteQueue(":memory:", "jobs", encryption_key=KEY)


def test_key_mismatch_kind(tmp_path: Path) -> None:
    _fill(tmp_path / "q.db", 1)
    with pytest.raises(QueueError) as info:
        SQLiteQueue(tmp_path / "q.db", "jobs", encryption_key="nope")
    assert info.value.kind is ErrorKind.INVALID_INPUT


# -- the command line ---------------------------------------------------------------------


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SQQUEUE_ENCRYPTION")}
    return subprocess.run(
        [sys.executable, "-m", "sqqueue.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        check=False,
    )


def test_commands_take_the_key_file_and_encrypt_decrypt_rekey(tmp_path: Path) -> None:
    key_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    for file, text in ((key_file, KEY), (new_file, "a new key\n")):
        file.write_text(text)
        file.chmod(0o600)
    plain, secret = tmp_path / "plain.db", tmp_path / "secret.db"
    _fill(plain, 7, key=None)
    done = _cli("--key-file", key_file, "encrypt", plain, secret)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stderr and "checked" in done.stdout
    _assert_no_marker(secret)
    # Every command reads the file with --key-file, or the key file in the environment.
    stats = _cli("--key-file", key_file, "stats", secret, "jobs", "--json")
    assert stats.returncode == 0, stats.stderr
    assert '"pending": 7' in stats.stdout
    env = {encryption.ENV_KEY_FILE: str(key_file)}
    assert _cli("enqueue", secret, "jobs", MARKER, env=env).returncode == 0
    missing = _cli("stats", secret, "jobs")
    assert missing.returncode == 1
    assert "this file is encrypted: give its key" in missing.stderr
    rekeyed = _cli("--key-file", key_file, "rekey", secret, "--new-key-file", new_file)
    assert rekeyed.returncode == 0, rekeyed.stderr
    old = _cli("--key-file", key_file, "stats", secret, "jobs")
    assert old.returncode == 1 and "wrong key" in old.stderr
    back = tmp_path / "back.db"
    decrypted = _cli("--key-file", new_file, "decrypt", secret, back)
    assert decrypted.returncode == 0, decrypted.stderr
    with SQLiteQueue(back, "jobs") as queue:
        assert _total(queue) == 8
    for done in (stats, rekeyed, decrypted, old, missing):
        assert KEY not in done.stdout + done.stderr


def test_key_file_others_may_read_is_refused_by_the_commands(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o644)
    done = _cli("--key-file", key_file, "stats", tmp_path / "q.db")
    assert done.returncode == 2
    assert "chmod 600" in done.stderr and KEY not in done.stderr


def test_security_page_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "security.md"
    parts = page.read_text().split("```python\n")
    blocks = [
        part.split("```", 1)[0]
        for before, part in itertools.pairwise(parts)
        if "<!-- test: skip" not in before.rstrip().rsplit("\n", 1)[-1]
    ]
    assert len(blocks) == 4  # encryption (two), signed messages (two)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(page), "exec"), {"print": lambda *a: None})
    written = [p for p in tmp_path.iterdir() if p.name.startswith("secret-jobs")]
    assert all(b"ada@example.com" not in p.read_bytes() for p in written)
    assert written


@pytest.mark.parametrize("where", ["", "[queues.jobs]\n"])
def test_config_file_never_holds_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    monkeypatch.setenv("SQQUEUE_CONFIG", str(tmp_path / "sqqueue.toml"))
    (tmp_path / "sqqueue.toml").write_text(f'{where}encryption_key = "{KEY}"\n')
    with pytest.raises(ValueError, match="not read from the config file") as info:
        SQLiteQueue(tmp_path / "q.db", "jobs")
    assert "SQQUEUE_ENCRYPTION_KEY_FILE" in str(info.value) and KEY not in str(info.value)
    # The key variables are known: no "not a sqqueue setting" warning for them.
    monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    monkeypatch.setenv(encryption.ENV_KEY, KEY)
    with SQLiteQueue(tmp_path / "q.db", "jobs"):
        pass
    assert "not a sqqueue setting" not in caplog.text


def test_check_and_salvage_read_encrypted_files(tmp_path: Path) -> None:
    """check and salvage take the key like every command: a healthy encrypted file checks
    clean and salvages whole (into an encrypted file), a damaged one is reported, never
    a traceback."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    secret = tmp_path / "secret.db"
    _fill(secret, 300, size=100)
    healthy = _cli("--key-file", key_file, "check", secret)
    assert healthy.returncode == 0, healthy.stderr
    saved = tmp_path / "saved.db"
    salvaged = _cli("--key-file", key_file, "salvage", secret, saved)
    assert salvaged.returncode == 0, salvaged.stderr
    _assert_no_marker(saved)
    with SQLiteQueue(saved, "jobs", encryption_key=KEY) as queue:
        assert _total(queue) == 300
    damaged = tmp_path / "damaged.db"
    data = bytearray(secret.read_bytes())
    data[4096 * 3 + 50 : 4096 * 3 + 3050] = bytes(3000)
    damaged.write_bytes(bytes(data))
    damaged.chmod(0o600)
    checked = _cli("--key-file", key_file, "check", damaged)
    assert checked.returncode == 1
    assert "damaged" in checked.stderr and "Traceback" not in checked.stderr
    rescued = _cli("--key-file", key_file, "salvage", damaged, tmp_path / "rescued.db")
    # What it reads it copies; if even the list of queues is gone, it says so.
    assert rescued.returncode == 0 or rescued.stderr.startswith("error: "), rescued.stderr
    assert "Traceback" not in rescued.stderr


def test_encrypting_a_file_that_is_not_there_creates_nothing(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    done = _cli("--key-file", key_file, "encrypt", tmp_path / "typo.db", tmp_path / "out.db")
    assert done.returncode == 1
    assert "no database at" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_encrypting_a_file_encrypted_already_points_to_rekey(tmp_path: Path) -> None:
    """Not "not an SQLite database; give its key": the file is named as encrypted already,
    with the key given (then rekey is the way to another key), or with another."""
    key_file, other_file = tmp_path / "key", tmp_path / "other.key"
    for file, text in ((key_file, KEY), (other_file, "another key\n")):
        file.write_text(text)
        file.chmod(0o600)
    secret = tmp_path / "secret.db"
    _fill(secret, 3)
    before = secret.read_bytes()
    same = _cli("--key-file", key_file, "encrypt", secret, tmp_path / "again.db")
    assert same.returncode == 1
    assert f"'{secret}' is encrypted already, with the key given" in same.stderr
    assert "sqqueue --key-file KEY rekey" in same.stderr
    other = _cli("--key-file", other_file, "encrypt", secret, tmp_path / "again.db")
    assert other.returncode == 1
    assert "encrypted already, under another key than the one given" in other.stderr
    assert "give its key" not in same.stderr + other.stderr
    assert KEY not in same.stderr + other.stderr
    assert secret.read_bytes() == before
    assert not (tmp_path / "again.db").exists()
