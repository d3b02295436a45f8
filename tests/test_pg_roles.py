"""Least privilege on PostgreSQL: a producer, a consumer and an administrator role, each
logging in with the privileges ``sqqueue grants`` prints and nothing more, against the
real test server."""

from __future__ import annotations

import itertools
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import sqqueue
from conftest import FakeClock
from sqqueue import ErrorKind, Ok, PostgresQueue, QueueError, cli, tools
from sqqueue.backends import postgres_sql

PASSWORD = "pw-S3cret-never-shown"
_role_counter = itertools.count()


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` with PASSWORD."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{role}:{PASSWORD}@{host}"))


def create_role(url: str) -> str:
    role = f"r{os.getpid()}_{next(_role_counter)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
    return role


def drop_role(url: str, role: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')  # its privileges, in this database
        conn.execute(f'DROP ROLE "{role}"')


def run_sql(url: str, statements: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


class Roles:
    """The URLs of the three roles, and the superuser's (the owner's) queue."""

    def __init__(self, url: str, schema: str, names: dict[str, str]) -> None:
        self.url = url
        self.schema = schema
        self.names = names
        self.clock = FakeClock()

    def open(self, kind: str, **settings: Any) -> PostgresQueue:
        settings.setdefault("server_clock", self.clock)
        return PostgresQueue(
            as_role(self.url, self.names[kind]), "jobs", schema=self.schema, **settings
        )

    def owner(self) -> PostgresQueue:
        return PostgresQueue(self.url, "jobs", schema=self.schema, server_clock=self.clock)


@pytest.fixture
def roles(pg_url: str, pg_schema: str) -> Iterator[Roles]:
    """Queue "jobs" made by the owner; three roles granted what ``sqqueue grants``
    prints, on a schema whose functions PUBLIC may not execute (so the grants alone
    must be enough)."""
    PostgresQueue(pg_url, "jobs", schema=pg_schema).close()
    run_sql(pg_url, [f'REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA "{pg_schema}" FROM PUBLIC'])
    names = {kind: create_role(pg_url) for kind in postgres_sql.ROLES}
    try:
        printed = CliRunner().invoke(
            cli.main,
            ["grants", pg_url, "--schema", pg_schema]
            + [f"--{kind}={role}" for kind, role in names.items()],
        )
        assert printed.exit_code == 0, printed.output
        run_sql(pg_url, [s for s in printed.output.split(";\n") if s.strip()])
        yield Roles(pg_url, pg_schema, names)
    finally:
        for role in names.values():
            drop_role(pg_url, role)


def refused(result: Any, role: str) -> QueueError:
    """The error of a call refused for lack of a privilege: clear, and without the
    password."""
    assert result.is_err(), result
    error: QueueError = result.error
    text = str(error)
    assert error.kind is ErrorKind.READ_ONLY, error
    assert role in text and "sqqueue grants" in text, text
    assert PASSWORD not in text and PASSWORD not in repr(error)
    return error


# -- the statements -----------------------------------------------------------------------


def test_grant_statements_quote_and_qualify_every_name() -> None:
    statements = tools.grant_sql("app", ["Jobs"], {"producer": "web-app"})
    assert 'GRANT USAGE ON SCHEMA "app" TO "web-app"' in statements
    assert 'GRANT INSERT, SELECT (id, group_key) ON "app"."Jobs" TO "web-app"' in statements
    assert 'GRANT USAGE ON SEQUENCE "app"."Jobs#id_seq" TO "web-app"' in statements
    # A consumer's and an administrator's statements are not a producer's.
    assert not any("DELETE" in s and '"app"."Jobs" ' in s for s in statements)


@pytest.mark.parametrize(
    "role", ['x" TO PUBLIC; --', "public", "PUBLIC", "pg_monitor", "current_user", "", "9lives"]
)
def test_role_names_are_validated(role: str) -> None:
    with pytest.raises(ValueError, match="role name"):
        tools.grant_sql("app", ["jobs"], {"consumer": role})


def test_unknown_role_kinds_and_bad_queue_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown role kind 'reader'"):
        tools.grant_sql("app", ["jobs"], {"reader": "r"})
    with pytest.raises(ValueError, match="invalid queue name"):
        tools.grant_sql("app", ['jobs"; DROP TABLE x; --'], {"admin": "a"})


def test_grants_command_needs_a_role_and_a_postgres_url(tmp_path: Any) -> None:
    runner = CliRunner()
    no_role = runner.invoke(cli.main, ["grants", "postgresql://h/db", "--queue", "jobs"])
    assert no_role.exit_code == 2 and "--producer" in no_role.output
    sqlite = runner.invoke(cli.main, ["grants", str(tmp_path / "jobs.db"), "--admin", "a"])
    assert sqlite.exit_code == 2 and "SQLite" in sqlite.output
    # With --queue nothing is opened: the host need not exist.
    offline = runner.invoke(
        cli.main,
        ["grants", "postgresql://nowhere.invalid/db", "--queue", "jobs", "--consumer", "w"],
    )
    assert offline.exit_code == 0, offline.output
    assert 'GRANT SELECT, UPDATE, DELETE ON "public"."jobs" TO "w";' in offline.output


# -- the roles on the real server ---------------------------------------------------------


def test_producer_opens_the_queue_and_enqueues_only(roles: Roles) -> None:
    role = roles.names["producer"]
    with roles.open("producer") as q:  # no DDL, no write at construction
        assert q.enqueue({"n": 1}).unwrap() > 0
        assert len(q.enqueue_batch([{"n": 2}, {"n": 3}]).unwrap()) == 2
        first = q.enqueue({"n": 4}, dedup_key="k").unwrap()
        assert q.enqueue({"n": 4}, dedup_key="k").unwrap() == first
        q.enqueue({"n": 5}, group="g").unwrap()
        q.enqueue({"n": 6}, group="g", delay=60).unwrap()
        # The outbox: a message committed with the producer's own rows.
        with psycopg.connect(as_role(roles.url, role)) as conn:
            conn.execute(f'SET search_path TO "{roles.schema}"')
            with conn.transaction():
                assert q.enqueue_in(conn, {"n": 7}).unwrap() > 0
        for call in (
            q.dequeue,
            q.peek,
            q.stats,
            q.get_dead_letters,
            lambda: q.get_message(first),
            lambda: q.list_messages("ready"),
            q.purge,
            lambda: q.purge("dead"),
            q.redrive,
        ):
            refused(call(), role)
    with roles.owner() as owner:
        assert owner.stats().unwrap().ready + owner.stats().unwrap().waiting == 7
    # Below the library too: the role cannot read nor delete a message.
    with psycopg.connect(as_role(roles.url, role), autocommit=True) as conn:
        for statement in ("SELECT body_text FROM {s}.jobs", "DELETE FROM {s}.jobs"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.format(s=f'"{roles.schema}"'))


def test_consumer_processes_and_dead_letters_but_cannot_administer(roles: Roles) -> None:
    role = roles.names["consumer"]
    with roles.owner() as owner:
        for n in range(4):
            owner.enqueue({"n": n}, max_attempts=1 if n == 3 else 5).unwrap()
    with roles.open("consumer") as q:
        first = q.dequeue(visibility_timeout=30).unwrap()
        assert first is not None
        q.extend(first, 60).unwrap()
        q.complete(first).unwrap()
        retried = q.dequeue().unwrap()
        assert retried is not None
        q.fail_message(retried, error="try again", delay=0).unwrap()
        buried = q.dequeue().unwrap()
        assert buried is not None
        q.fail_message(buried, send_to_dlq=True, error="bad input").unwrap()
        # A lease that runs out on the last attempt is folded into the dead letters by
        # the next consumer's claim.
        last = q.dequeue(visibility_timeout=10).unwrap()
        again = q.dequeue(visibility_timeout=10).unwrap()
        assert last is not None and again is not None
        lapsed = next(m for m in (last, again) if m.max_attempts == 1)
        roles.clock.advance(11)
        q.dequeue().unwrap()
        assert q.stats().unwrap().dead == 2
        for call in (
            q.purge,
            lambda: q.purge("dead"),
            lambda: q.purge("ready"),
            q.redrive,
            q.get_dead_letters,
            lambda: q.list_messages("dead"),
            lambda: q.enqueue({"n": 9}),
        ):
            refused(call(), role)
    with roles.owner() as owner:
        dead = {d["id"] for d in owner.get_dead_letters().unwrap()}
        assert dead == {buried.id, lapsed.id}
        assert owner.stats().unwrap().completed_total == 1


def test_administrator_does_everything(roles: Roles) -> None:
    with roles.open("admin") as q:
        ids = q.enqueue_batch([{"n": n} for n in range(3)]).unwrap()
        held = q.dequeue().unwrap()
        assert held is not None
        q.fail_message(held, send_to_dlq=True, error="x").unwrap()
        assert [d["id"] for d in q.get_dead_letters().unwrap()] == [held.id]
        assert q.get_message(ids[1]).unwrap() is not None
        assert q.redrive().unwrap() == 1
        q.fail_message(held.id, send_to_dlq=True).unwrap()
        assert q.delete_dead_letters([held.id]).unwrap() == 1
        assert q.purge().unwrap() == 2
        assert q.stats().unwrap().ready == 0


def test_a_role_without_the_schema_is_told_what_is_missing(pg_url: str, pg_schema: str) -> None:
    PostgresQueue(pg_url, "jobs", schema=pg_schema).close()
    role = create_role(pg_url)
    try:
        with pytest.raises(QueueError) as raised:
            PostgresQueue(as_role(pg_url, role), "jobs", schema=pg_schema)
        text = str(raised.value)
        assert "USAGE" in text and pg_schema in text and "sqqueue grants" in text, text
        assert PASSWORD not in text
    finally:
        drop_role(pg_url, role)


def test_listing_a_schema_without_usage_says_so(pg_url: str, pg_schema: str) -> None:
    """A role that may not use the schema is told so, not handed an empty list as if
    there were no queues; a schema that does not exist has none."""
    PostgresQueue(pg_url, "jobs", schema=pg_schema).close()
    role = create_role(pg_url)
    try:
        error = refused(sqqueue.list_queues(as_role(pg_url, role), schema=pg_schema), role)
        assert "USAGE" in str(error) and pg_schema in str(error), error
        assert sqqueue.list_queues(as_role(pg_url, role), schema="no_such_schema") == Ok([])
    finally:
        drop_role(pg_url, role)


def test_every_granted_role_lists_the_queues(roles: Roles) -> None:
    for kind in postgres_sql.ROLES:
        url = as_role(roles.url, roles.names[kind])
        assert sqqueue.list_queues(url, schema=roles.schema) == Ok(["jobs"]), kind


def test_a_role_may_not_create_a_queue(roles: Roles) -> None:
    url = as_role(roles.url, roles.names["admin"])
    with pytest.raises(QueueError) as raised:
        PostgresQueue(url, "other", schema=roles.schema)
    text = str(raised.value)
    assert "'other' does not exist yet" in text and "owner of the schema" in text, text
    assert raised.value.kind is ErrorKind.READ_ONLY
    assert PASSWORD not in text
