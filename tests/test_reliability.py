"""Reliability: the torture program (short form) and the hardening it relies on.

* the ``tools/torture.py --short`` run: real processes, SIGKILL, disk full, power-loss copies,
  the queue locked past the lease and a clock set back, and on PostgreSQL crash, contention,
  lockwait, clients with skewed clocks, pgchaos (connections terminated, server restarted)
  and pgoutage (a server that is not there, then stopped and started);
* payload checksums and poison rows: dead-lettered with the reason, never blocking the head,
  never leaving a transaction open, logged and counted (statsd ``poison``);
* damaged files: a clear error naming the file, ``tools.check`` and ``tools.salvage``;
* a file deleted, moved away or replaced under an open queue: an error, not a ghost file;
* disk full under RLIMIT_FSIZE, in a subprocess (also killed by SIGXFSZ mid-write);
* a 100 MB payload: peak RSS growth bounded, measured in a fresh subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import err
from sqqueue import ErrorKind, QueueError, SQLiteQueue
from sqqueue.backends import sqlite as sqlite_backend
from sqqueue.backends import sqlite_files
from sqqueue.tools import check, salvage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORTURE = ROOT / "tools" / "torture.py"


def run_script(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (bounded in time)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_rows(output: str) -> list[list[str]]:
    """The rows of the markdown figures table printed by the torture program."""
    rows = []
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("| Scenario") and "---" not in line:
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


# -- the torture program -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_torture_short_run_holds_every_invariant(tmp_path: Path) -> None:
    """The CI form of the torture program exits 0 with LOST = PHANTOM = 0 in its table, on
    SQLite and on PostgreSQL (crash, contention, and pgchaos: connections terminated and the
    server restarted mid-run, with no double delivery within a live lease), and every other
    scenario's invariants hold (spoiled rows, misbehaving handlers, fencing by bare id)."""
    started = time.monotonic()
    command = [sys.executable, str(TORTURE), "--short", "--db-dir", str(tmp_path)]
    if os.environ.get("SQQUEUE_TEST_POSTGRES_URL"):
        command += ["--pg-url", os.environ["SQQUEUE_TEST_POSTGRES_URL"]]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
        cwd=ROOT,
    )
    output = done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "**FAIL**" in line]
    failed += [
        line
        for line in output.splitlines()
        if line.startswith("torture: seed") or "  missing" in line or "  error sample" in line
    ]
    # The failed rows and the seed (to run it again) first: the whole output is too long
    # for a report to keep.
    assert done.returncode == 0, "\n".join([*failed, "", output[-4000:]])
    rows = table_rows(done.stdout)
    scenarios = {row[0] for row in rows}
    assert scenarios == {
        "crash",
        "contention",
        "stale",
        "diskfull",
        "powerloss",
        "lockwait",
        "clocks",
        "pg-crash",
        "pg-contention",
        "pg-lockwait",
        "pg-clocks",
        "pgchaos",
        "close",
        "outbox",
        "churn",
        "walgrow",
        "idle",
        "pgoutage",
        "spoiled",
        "handlers",
        "idfence",
    }, output
    lost = [row for row in rows if "LOST" in row[1]]
    phantom = [row for row in rows if "PHANTOM" in row[1]]
    in_lease = [row for row in rows if "double deliveries within a live lease" in row[1]]
    assert {row[0] for row in lost} >= {"crash", "powerloss", "pg-crash", "pgchaos"}, output
    assert {row[0] for row in phantom} >= {"crash", "pg-crash", "pgchaos"}, output
    assert {row[0] for row in in_lease} >= {"crash", "pg-crash", "pgchaos"}, output
    assert all(row[2] == "0" for row in lost + phantom + in_lease), lost + phantom + in_lease
    # pgchaos really was chaotic: connections were terminated (and, on the throwaway
    # server, the server restarted), and the clients reconnected.
    chaos = {row[1]: row for row in rows if row[0] == "pgchaos"}
    terminated = next(row for figure, row in chaos.items() if "pg_terminate_backend" in figure)
    assert int(terminated[2].split()[0]) > 0, terminated
    if not os.environ.get("SQQUEUE_TEST_POSTGRES_URL"):
        restart = next(row for figure, row in chaos.items() if figure.startswith("server restart"))
        assert restart[-1] == "PASS", restart
    assert not [row for row in rows if "FAIL" in row[-1]], output
    assert "all invariants hold" in done.stdout
    assert time.monotonic() - started < 360


# -- payload checksums ---------------------------------------------------------------------


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 standing in for a statsd server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def received(sock: socket.socket, wanted: bytes, seconds: float = 5) -> list[bytes]:
    """Datagrams read until one contains ``wanted`` (or the time is up)."""
    packets: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            packet = sock.recv(65536)
        except TimeoutError:
            break
        packets.append(packet)
        if wanted in packet:
            break
    return packets


def rewrite_in_file(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes inside the database file itself (the queue must be closed)."""
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    data = path.read_bytes()
    assert data.count(old) == 1, "the marker must be stored exactly once"
    assert len(old) == len(new)
    path.write_bytes(data.replace(old, new))


CHANGED_PAYLOADS: dict[str, tuple[object, bytes, bytes]] = {
    # payload, stored bytes to find, what they become on disk
    "text": ("payload-MARKER-text", b"MARKER-text", b"MARKER-tExt"),
    "bytes": (b"\x00\x01MARKER-bytes\x02", b"MARKER-bytes", b"MARKER-bytez"),
    "json": ({"k": "MARKER-json"}, b"MARKER-json", b"MARKER-jsoN"),
    # A flipped bit that leaves the text invalid UTF-8 must be caught the same way.
    "text-invalid-utf8": ("payload-MARKER-utf8", b"MARKER-utf8", b"MARKER-\xffutf"),
}


@pytest.mark.parametrize("case", sorted(CHANGED_PAYLOADS))
def test_payload_changed_on_disk_goes_to_dlq_and_queue_flows(
    case: str,
    db_path: Path,
    statsd_socket: socket.socket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payload whose stored bytes changed is dead-lettered with an error naming the
    checksum, logged at ERROR with its id, counted as statsd 'poison'; the next one flows."""
    payload, old, new = CHANGED_PAYLOADS[case]
    with SQLiteQueue(db_path, table_name="jobs") as queue:
        victim = queue.enqueue(payload).unwrap()
        following = queue.enqueue("next message").unwrap()
    rewrite_in_file(db_path, old, new)
    port = statsd_socket.getsockname()[1]
    caplog.set_level(logging.ERROR, logger="sqqueue")
    with SQLiteQueue(
        db_path, table_name="jobs", statsd_host="127.0.0.1", statsd_port=port
    ) as queue:
        message = queue.dequeue().unwrap()
        assert message is not None
        assert (message.id, message.payload) == (following, "next message")
        assert queue.complete(message).is_ok()
        dead = queue.get_dead_letters().unwrap()
        assert [d["id"] for d in dead] == [victim]
        assert "checksum" in dead[0]["last_error"] or "UTF-8" in dead[0]["last_error"]
        # The queue keeps flowing after the poison.
        again = queue.enqueue("after").unwrap()
        assert queue.dequeue().unwrap().id == again
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"message {victim}" in r.getMessage() for r in records), records
    packets = received(statsd_socket, b"poison")
    assert any(b"poison:1|c" in p for p in packets), packets


# -- poison rows ---------------------------------------------------------------------------


POISON_ROWS: dict[str, tuple[str | bytes, str, str]] = {
    # stored payload, encoding column, what the dead letter's error must mention
    "undecodable-json": ('{"unterminated": ', "json", "could not be decoded"),
    "unknown-encoding": ("hello", "msgpack", "msgpack"),
}


@pytest.mark.parametrize("method", ["dequeue", "dequeue_batch", "peek"])
@pytest.mark.parametrize("case", sorted(POISON_ROWS))
@pytest.mark.plain_file("writes poison rows with stdlib sqlite3, which has no key")
def test_poison_row_is_dead_lettered_without_blocking_or_open_transaction(
    case: str,
    method: str,
    make_sqlite_queue: Callable[..., SQLiteQueue],
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A row that cannot be decoded is dead-lettered with the reason; the next message is
    delivered; no transaction is left open (another connection can write at once)."""
    stored, encoding, reason = POISON_ROWS[case]
    queue = make_sqlite_queue(table_name="jobs")
    poison = queue.enqueue("placeholder").unwrap()
    following = queue.enqueue("good").unwrap()
    raw = sqlite3.connect(db_path, isolation_level=None)
    checksum = zlib.crc32(stored.encode() if isinstance(stored, str) else stored)
    raw.execute(
        "UPDATE jobs SET payload = ?, encoding = ?, checksum = ? WHERE id = ?",
        (stored, encoding, checksum, poison),
    )
    raw.close()
    caplog.set_level(logging.ERROR, logger="sqqueue")
    if method == "dequeue":
        got = queue.dequeue().unwrap()
        assert got is not None and got.id == following
    elif method == "dequeue_batch":
        assert [m.id for m in queue.dequeue_batch(10).unwrap()] == [following]
    else:
        got = queue.peek().unwrap()
        assert got is not None and got.id == following
    dead = queue.get_dead_letters().unwrap()
    assert [d["id"] for d in dead] == [poison]
    assert reason in dead[0]["last_error"]
    assert any(f"message {poison}" in r.getMessage() for r in caplog.records)
    with queue._backend.raw_connection() as conn:  # type: ignore[attr-defined]
        assert not conn.in_transaction
    other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # fails at once if a write lock were still held
        other.execute("ROLLBACK")
    finally:
        other.close()


# -- damaged files -------------------------------------------------------------------------


def table_leaf_pages(path: Path, table: str) -> list[int]:
    """Page numbers of the b-tree leaves holding ``table``'s rows."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def smash_pages(path: Path, pages: list[int], page_size: int = 4096) -> None:
    """Overwrite whole pages of the file with random bytes."""
    rng = random.Random(7)
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * page_size)
            f.write(rng.randbytes(page_size))


@pytest.fixture
def damaged_db(db_path: Path) -> tuple[Path, dict[int, str]]:
    """A queue file of 400 messages with two of its table's leaf pages destroyed."""
    payloads = [f"message-{i:04d}-" + "p" * 300 for i in range(400)]
    with SQLiteQueue(db_path, table_name="jobs") as queue:
        ids = queue.enqueue_batch(payloads).unwrap()
    leaves = table_leaf_pages(db_path, "jobs")
    assert len(leaves) > 20
    smash_pages(db_path, [leaves[3], leaves[len(leaves) // 2]])
    return db_path, dict(zip(ids, payloads, strict=True))


def test_not_a_database_fails_to_open_naming_the_file(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises a QueueError (CORRUPT) naming the file."""
    path = tmp_path / "garbage.db"
    path.write_bytes(random.Random(1).randbytes(64 * 1024))
    with pytest.raises(QueueError) as info:
        SQLiteQueue(path, table_name="jobs")
    assert info.value.kind is ErrorKind.CORRUPT
    assert str(path) in str(info.value)
    assert "not an SQLite database" in str(info.value) and "backup" in str(info.value)
    with pytest.raises(QueueError, match="not an SQLite database") as checked:
        check(path)  # nothing to check, and nothing salvage could read
    assert checked.value.kind is ErrorKind.CORRUPT
    assert str(path) in str(checked.value)


def test_damaged_pages_give_a_clear_err_naming_the_file(
    damaged_db: tuple[Path, dict[int, str]],
) -> None:
    """Reading a destroyed page returns Err(CORRUPT) naming the file and what to do."""
    path, _ = damaged_db
    with SQLiteQueue(path, table_name="jobs") as queue:
        errors = []
        for _ in range(400):
            got = queue.dequeue()
            if got.is_err():
                errors.append(got.error)
                break
            if got.value is None:
                break
        assert errors, "every dequeue succeeded on a file with destroyed pages"
        error = errors[0]
        assert error.kind is ErrorKind.CORRUPT
        assert str(path) in str(error)
        assert "integrity_check" in str(error) or "salvage" in str(error)


def test_check_reports_problems_only_for_a_damaged_file(
    damaged_db: tuple[Path, dict[int, str]], tmp_path: Path
) -> None:
    """tools.check: [] for a healthy file, a non-empty list for the damaged one."""
    healthy = tmp_path / "healthy.db"
    with SQLiteQueue(healthy, table_name="jobs") as queue:
        queue.enqueue("fine").unwrap()
    assert check(healthy) == []
    path, _ = damaged_db
    problems = check(path)
    assert problems != []
    # One problem per entry (SQLite may give several in one row, a line each), so the
    # count the command line prints is the count of lines it lists.
    assert all(p.strip() and "\n" not in p for p in problems), problems


def test_salvage_copies_every_readable_message(
    damaged_db: tuple[Path, dict[int, str]], tmp_path: Path
) -> None:
    """tools.salvage copies each readable row (same id, same payload) into a new file, counts
    the unreadable ones, leaves the source untouched, and refuses an existing target."""
    path, originals = damaged_db
    before = path.read_bytes()
    target = tmp_path / "rescued.db"
    report = salvage(path, target)
    assert path.read_bytes() == before
    copied = report.copied["jobs"]
    assert 0 < report.lost_rows < len(originals)
    assert copied + report.lost_rows == len(originals)
    # Said to be incomplete: what the queue's counters count and the copy lacks, and
    # what SQLite's check finds in the source.
    assert report.missing == {"jobs": report.lost_rows}
    assert report.damage and not report.complete
    assert check(target) == []
    with SQLiteQueue(target, table_name="jobs") as rescued:
        stats = rescued.stats().unwrap()
        assert (stats.depth, stats.enqueued_total) == (copied, copied)  # counted as they came
        got = rescued.dequeue_batch(1000).unwrap()
    assert len(got) == copied
    assert all(originals[m.id] == m.payload for m in got)
    # Readable means readable: the rows on the intact pages all made it.
    readable = sqlite3.connect(path)
    intact = 0
    for ident in originals:
        try:
            readable.execute("SELECT payload FROM jobs WHERE id = ?", (ident,)).fetchone()
            intact += 1
        except sqlite3.DatabaseError:
            pass
    readable.close()
    assert copied == intact
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(QueueError) as info:
        salvage(path, existing)
    assert info.value.kind is ErrorKind.INVALID_INPUT
    assert existing.read_bytes() == b"keep me"


# -- disk full -----------------------------------------------------------------------------


DISK_FULL_SCRIPT = """
import json, os, resource, signal, sys, zlib
from sqqueue import SQLiteQueue

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get an error instead of being killed
db = sys.argv[1]
queue = SQLiteQueue(db, table_name="jobs")
acked = {}
def put(size):
    data = os.urandom(size)
    result = queue.enqueue(data)
    if result.is_ok():
        acked[result.value] = zlib.crc32(data)
    return result
for _ in range(10):
    put(1000).unwrap()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
sizes = [os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p)]
resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 128 * 1024, hard))
for _ in range(10_000):
    error = put(4096)
    if error.is_err():
        break
later = put(4096)
missing_while_full = len(set(acked) - {m["id"] for m in queue.list_messages("all", limit=10_000).unwrap()})
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
again = put(4096)
seen = {}
while True:
    batch = queue.dequeue_batch(100).unwrap()
    if not batch:
        break
    for message in batch:
        seen[message.id] = zlib.crc32(message.payload)
        queue.complete(message).unwrap()
print(json.dumps({
    "kind": error.error.kind.value if error.is_err() else None,
    "text": str(error.error) if error.is_err() else "",
    "later_kind": later.error.kind.value if later.is_err() else "accepted",
    "acked": len(acked),
    "missing_while_full": missing_while_full,
    "again_ok": again.is_ok(),
    "lost": len(set(acked) - set(seen)),
    "changed": sum(1 for i, c in acked.items() if seen.get(i, c) != c),
    "empty": queue.is_drained().unwrap(),
}))
"""


# A full disk and a write killed mid-way, on a plain and on an encrypted file (the key in
# the environment, which the child process inherits).
@pytest.mark.usefixtures("sqlite_file")
def test_disk_full_is_an_err_and_nothing_is_lost(db_path: Path) -> None:
    """Under RLIMIT_FSIZE (SIGXFSZ ignored) a write returns Err(DISK_FULL) saying the disk
    is full; acknowledged messages stay; after the limit is lifted everything works."""
    done = run_script(DISK_FULL_SCRIPT, str(db_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kind"] == "disk_full", report
    assert "full" in report["text"].lower() and str(db_path) in report["text"]
    assert report["later_kind"] == "disk_full"
    assert report["acked"] > 10
    assert report["missing_while_full"] == 0
    assert report["again_ok"] is True
    assert report["lost"] == 0 and report["changed"] == 0
    assert report["empty"] is True
    assert check(db_path) == []


STATS_WHEN_FULL_SCRIPT = """
import os, resource, sqlite3, sys
from sqqueue import SQLiteQueue

db = sys.argv[1]
queue = SQLiteQueue(db, table_name="jobs")
queue.enqueue("first").unwrap()
reader = sqlite3.connect(db)
reader.execute("BEGIN")
reader.execute("SELECT count(*) FROM jobs").fetchall()  # holds the WAL: no checkpoint
queue.enqueue_batch([os.urandom(2000) for _ in range(200)]).unwrap()
reader.close()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
# The database file cannot grow: a checkpoint, which copies the WAL into it, fails.
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(db), hard))
stats = queue.stats()
assert stats.is_ok(), stats
assert stats.value.ready == 201 and stats.value.wal_frames > 0, stats
print("ok")
"""


@pytest.mark.plain_file("the script holds the WAL with a plain sqlite3 reader")
@pytest.mark.usefixtures("sqlite_file")
def test_stats_work_when_the_disk_is_full(db_path: Path) -> None:
    """stats() counts the WAL with a checkpoint, which writes to the database: when it
    cannot write, the WAL's progress is read from its index instead, and monitoring keeps
    working when it is needed most."""
    done = run_script(STATS_WHEN_FULL_SCRIPT, str(db_path))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


SIGXFSZ_SCRIPT = """
import os, resource, signal, sys, zlib
from sqqueue import SQLiteQueue

signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # CPython ignores it by default
db, log = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
queue = SQLiteQueue(db, table_name="jobs", vacuum_threshold=int(sys.argv[3]))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
sizes = [os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p)]
resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes + [4096]) + 300 * 1024, hard))
for i in range(100_000):
    data = os.urandom(100 + (i * 7919) % 30_000)
    ident = queue.enqueue(data).unwrap()
    os.write(fd, f"{ident} {zlib.crc32(data)}\\n".encode())
sys.exit(3)
"""


@pytest.mark.parametrize("vacuum_threshold", [1000, 3], ids=["in-wal-write", "in-checkpoint"])
@pytest.mark.usefixtures("sqlite_file")
def test_sigxfsz_kill_mid_write_leaves_a_healthy_file(
    db_path: Path, tmp_path: Path, vacuum_threshold: int
) -> None:
    """A writer killed by SIGXFSZ inside a write (WAL append or checkpoint) leaves a file
    that opens, passes integrity_check and holds every acknowledged message."""
    with SQLiteQueue(db_path, table_name="jobs") as queue:
        queue.enqueue_batch([os.urandom(500) for _ in range(50)]).unwrap()
    log = tmp_path / "acked.log"
    done = run_script(SIGXFSZ_SCRIPT, str(db_path), str(log), str(vacuum_threshold))
    assert done.returncode == -signal.SIGXFSZ, done.stderr[-3000:]
    acked = {}
    for line in log.read_text().splitlines():
        ident, crc = line.split()
        acked[int(ident)] = int(crc)
    assert len(acked) > 5
    assert check(db_path) == []
    with SQLiteQueue(db_path, table_name="jobs") as queue:
        seen = {}
        while batch := queue.dequeue_batch(200).unwrap():
            for message in batch:
                seen[message.id] = zlib.crc32(message.payload)
                assert queue.complete(message).is_ok()
        assert all(seen.get(ident) == crc for ident, crc in acked.items())
        assert queue.enqueue(b"still works").is_ok()


# -- big payloads --------------------------------------------------------------------------


RSS_SCRIPT = """
import json, os, resource, sys
from sqqueue import SQLiteQueue

size = 100 * 1024 * 1024
payload = os.urandom(size)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after import + payload
queue = SQLiteQueue(sys.argv[1], table_name="big")
ident = queue.enqueue(payload).unwrap()
message = queue.dequeue().unwrap()
same = message.id == ident and message.payload == payload
queue.complete(message).unwrap()
queue.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": size, "growth": (peak - baseline) * 1024, "same": same}))
"""


@pytest.mark.slow
def test_100mb_payload_peak_rss_growth_under_4x(db_path: Path) -> None:
    """Enqueue + dequeue of a 100 MiB payload grows peak RSS by less than 4 x its size.

    Measured in a fresh interpreter: the baseline is ru_maxrss after importing sqqueue and
    building the payload; the growth is the final ru_maxrss minus that baseline.
    """
    done = run_script(RSS_SCRIPT, str(db_path), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["same"] is True
    ratio = report["growth"] / report["size"]
    assert ratio < 4, f"peak RSS grew by {ratio:.1f} x the payload size"


# -- the file under an open queue deleted, moved away or replaced --------------------------


@pytest.fixture
def look_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls look at the file at every call, not once a second (no sleeping in tests)."""
    monkeypatch.setattr(sqlite_backend, "_FILE_CHECK_INTERVAL", 0.0)


def _remove_with_companions(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


@pytest.mark.usefixtures("look_every_call")
def test_a_deleted_file_is_an_error_not_a_ghost(tmp_path: Path) -> None:
    """rm jobs.db* under a running queue: its calls say so (writes would only go to the
    unlinked file, lost when it closes) while a new queue object uses the new file."""
    db = tmp_path / "jobs.db"
    with SQLiteQueue(db, table_name="jobs") as old:
        assert old.enqueue("before").is_ok()
        _remove_with_companions(db)
        for result in (old.enqueue("after"), old.dequeue(), old.stats(), old.peek()):
            said = f"database file {str(db)!r} was deleted or moved away"
            err(result, ErrorKind.STORAGE, said, "open the queue again")
        with SQLiteQueue(db, table_name="jobs") as new:
            assert new.enqueue("fresh").unwrap() == 1
            assert new.stats().unwrap().depth == 1
        assert old.enqueue("still after").is_err()


@pytest.mark.usefixtures("look_every_call")
def test_a_replaced_file_is_an_error_until_the_opened_one_is_back(tmp_path: Path) -> None:
    """mv jobs.db aside, then a copy (a restore) in its place: the queue object that had
    the original open refuses to go on with a file nobody else sees, until it is back."""
    db = tmp_path / "jobs.db"
    aside = tmp_path / "aside.db"
    with SQLiteQueue(db, table_name="jobs") as q:
        assert q.enqueue("one").is_ok()
        os.rename(db, aside)
        db.write_bytes(aside.read_bytes())
        err(q.enqueue("two"), ErrorKind.STORAGE, "was replaced by another file")
        db.unlink()
        os.rename(aside, db)
        assert q.enqueue("three").is_ok()
        assert [m.payload for m in q.dequeue_batch(10).unwrap()] == ["one", "three"]


def test_the_file_is_looked_at_once_a_second_not_at_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look costs a stat: calls make one a second (by the monotonic clock)."""
    db = tmp_path / "jobs.db"
    looks: list[str] = []
    real = sqlite_files.file_identity

    def counted(path: str) -> tuple[int, int] | None:
        looks.append(path)
        return real(path)

    with SQLiteQueue(db, table_name="jobs") as q:
        monkeypatch.setattr(sqlite_files, "file_identity", counted)
        for n in range(200):
            assert q.enqueue(n).is_ok()
    assert 1 <= len(looks) <= 10, len(looks)


@pytest.mark.usefixtures("look_every_call")
def test_a_queue_opened_by_a_relative_path_keeps_its_file_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is made absolute when the queue is opened: after a chdir the queue still
    works on its file (no false "deleted" error, no empty database made in the new
    directory by a connection opened later)."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    with SQLiteQueue("jobs.db", table_name="jobs") as queue:
        assert queue.enqueue("one").is_ok()
        monkeypatch.chdir(second)
        held = queue.dequeue().unwrap()
        assert queue.enqueue("two").is_ok()
        assert held is not None and held.payload == "one"
    assert list(second.iterdir()) == []


@pytest.mark.usefixtures("look_every_call")
def test_a_closed_queue_says_closed_even_when_its_file_is_gone(tmp_path: Path) -> None:
    """CLOSED comes first: a worker stops on it (a deleted file alone is STORAGE)."""
    db = tmp_path / "jobs.db"
    queue = SQLiteQueue(db, table_name="jobs")
    queue.close()
    _remove_with_companions(db)
    err(queue.dequeue(), ErrorKind.CLOSED)


# -- an interrupt at any statement -----------------------------------------------------------


def _interrupt_at_statement(n: int) -> None:
    """Raise KeyboardInterrupt as the ``n``-th SQLite statement from now returns, as a
    Ctrl-C arriving at that moment would."""
    seen = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal seen
        if event != "c_return" or getattr(arg, "__name__", "") not in ("execute", "executemany"):
            return
        if not isinstance(getattr(arg, "__self__", None), sqlite3.Connection | sqlite3.Cursor):
            return
        seen += 1
        if seen == n:
            sys.setprofile(None)
            raise KeyboardInterrupt

    sys.setprofile(hook)


def test_an_interrupt_at_any_statement_leaves_no_transaction_open(tmp_path: Path) -> None:
    """Ctrl-C may land as any statement returns, BEGIN included: the call is interrupted,
    but no transaction stays open on a pooled connection (which would hold the write lock
    and make later calls' Ok a lie), and every later Ok is on disk."""
    path = tmp_path / "q.db"
    queue = SQLiteQueue(path, table_name="jobs", lock_timeout=2)
    calls: dict[str, Callable[[], object]] = {
        "enqueue": lambda: queue.enqueue("x"),
        "enqueue_batch": lambda: queue.enqueue_batch(["x", "y"]),
        "dequeue": queue.dequeue,
        "dequeue_batch": lambda: queue.dequeue_batch(5),
        "complete": lambda: queue.complete(queue.dequeue().unwrap() or 0),
        "fail_message": lambda: queue.fail_message(queue.dequeue().unwrap() or 0),
        "stats": queue.stats,
    }
    interrupted = set()
    for name, call in calls.items():
        for n in range(1, 9):
            queue.enqueue_batch(["a", "b", "c"]).unwrap()
            _interrupt_at_statement(n)
            try:
                call()
            except KeyboardInterrupt:
                interrupted.add(name)
            finally:
                sys.setprofile(None)
            other = sqlite3.connect(path, timeout=1, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # the write lock is free
                other.execute("ROLLBACK")
                message_id = queue.enqueue(f"{name}-{n}").unwrap()
                stored = other.execute("SELECT payload FROM jobs WHERE id = ?", (message_id,))
                assert stored.fetchone() == (f"{name}-{n}",), (name, n)
            finally:
                other.close()
    assert interrupted == set(calls)  # each call was cut off somewhere
    queue.close()
