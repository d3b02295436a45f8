"""Least privilege on PostgreSQL: a producer, a consumer and an administrator role, each
logging in with the privileges ``sqqueue grants`` prints and nothing more, against the
real test server."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from sqqueue import cli, tools

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
