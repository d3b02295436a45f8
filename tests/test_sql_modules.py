"""Every SQL statement lives in its dialect's SQL module, with a one-line description,
and both dialects name the same statements."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from sqqueue.backends import postgres_sql, sqlite_sql

SRC = Path(__file__).resolve().parent.parent / "src" / "sqqueue"
SQL_MODULES = {SRC / "backends" / "sqlite_sql.py", SRC / "backends" / "postgres_sql.py"}
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK|"
    r"SAVEPOINT|RELEASE|VACUUM|ANALYZE|LISTEN|UNLISTEN|NOTIFY|SET|SHOW|WITH|LOCK|TRUNCATE)\b"
)

# Statement names one dialect has and the other has not, and why. (The inserts, claims
# and dedup steps are shaped by what each engine does fastest: SQLite runs the steps of
# one transaction on one connection at no cost per statement, PostgreSQL pays a round
# trip per statement and does more in one. The plan that chooses among them is shared:
# common.SQLBackend.)
ONLY_SQLITE = {
    "body_get": "large payloads live in a side table; PostgreSQL TOASTs them itself",
    "body_put": "large payloads live in a side table; PostgreSQL TOASTs them itself",
    "insert_plain": "an unsigned plain message in one autocommit statement, positional "
    "parameters, no signature column",
    "insert_plain_at": "an unsigned batch numbered by the caller from next_id, run by executemany",
    "insert_grouped": "a group's message: waiting if one is ahead (PostgreSQL: group_lock)",
    "reserve_base": "ids come from counters, not a sequence (PostgreSQL: raise_sequence)",
    "reserve_high": "ids come from counters, not a sequence (PostgreSQL: raise_sequence)",
    "dedup_put": "one upsert; PostgreSQL claims the key and sets it in two steps",
    "claim_pick": "SELECT then UPDATE by id: SQLite's UPDATE ... RETURNING with a subquery "
    "builds temporary tables on every claim",
    "claim_one": "the UPDATE of the one row claim_pick chose",
    "claim_many": "a batch's UPDATE of the rows claim_pick would choose",
    "claimed": "a batch is read after its claim commits, outside SQLite's one write lock "
    "(PostgreSQL's claim returns its rows, locking only them)",
    "claimed_by_token": "the fallback of claimed",
    "make_counters": "one counter row per name; PostgreSQL's counters are sharded rows "
    "written by sqqueue_count, created with the queue",
    "reanchor_leases": "leases measured on a client clock that was stepped back; "
    "PostgreSQL measures on the server's clock",
}
ONLY_POSTGRES = {
    "may_administer": "a role's privilege on the dead letters, checked before a purge "
    "(SQLite has no roles)",
    "insert_one": "a plain message and its NOTIFY in one round trip",
    "insert_many": "a batch as one statement over arrays (one round trip)",
    "group_lock": "an advisory lock orders a group's enqueues across connections",
    "sequence": "ids come from a sequence",
    "raise_sequence": "ids come from a sequence: past the ids of copied rows",
    "dedup_claim": "the key is taken with ON CONFLICT DO NOTHING, so racing enqueues see "
    "one winner without a serialisation failure",
    "dedup_set": "the second step of dedup_claim",
    "claim": "claim as one statement with FOR UPDATE SKIP LOCKED",
    "claim_probe": "whether a fold must run first, in the same round trip as the claim",
    "lock_expired": "rows to fold locked with SKIP LOCKED, so two consumers never fold "
    "the same row",
    "complete_counted": "the delete and the completed total in one round trip",
    "complete_all": "complete_batch in one round trip",
    "notify": "wakes consumers in other processes (SQLite's watcher polls data_version)",
}


def literals(tree: ast.AST) -> list[tuple[int, str]]:
    """The string literals of a module but its docstrings (f-strings by their text)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            found.append((node.lineno, text))
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in SRC.rglob("*.py") if p not in SQL_MODULES),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_no_sql_outside_the_sql_modules(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    held = [(line, text[:60]) for line, text in literals(tree) if SQL_START.match(text)]
    assert held == []


def described(path: Path, name: str) -> tuple[set[str], set[str]]:
    """The keys of the dict ``name`` in ``path``, and those with a comment line (the
    statement's description) right above them."""
    source = path.read_text()
    tree = ast.parse(source)
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    )
    assert isinstance(table, ast.Dict)
    comments = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    keys, with_comment = set(), set()
    for key in table.keys:
        assert isinstance(key, ast.Constant)
        keys.add(key.value)
        if key.lineno - 1 in comments:
            with_comment.add(key.value)
    return keys, with_comment


@pytest.mark.parametrize("module", [sqlite_sql, postgres_sql], ids=["sqlite", "postgresql"])
def test_every_statement_has_a_description(module: object) -> None:
    path = Path(module.__file__)  # type: ignore[attr-defined]
    keys, with_comment = described(path, "STATEMENTS")
    assert sorted(keys - with_comment) == []


def test_both_dialects_name_the_same_statements() -> None:
    sqlite_names = set(sqlite_sql.STATEMENTS) - set(ONLY_SQLITE)
    postgres_names = set(postgres_sql.STATEMENTS) - set(ONLY_POSTGRES)
    assert sorted(sqlite_names - postgres_names) == []
    assert sorted(postgres_names - sqlite_names) == []
    assert set(ONLY_SQLITE) <= set(sqlite_sql.STATEMENTS)
    assert set(ONLY_POSTGRES) <= set(postgres_sql.STATEMENTS)


def is_sql(value: object) -> bool:
    """Whether ``value`` is SQL text, or a tuple of statements."""
    if isinstance(value, str):
        return bool(SQL_START.match(value))
    return isinstance(value, tuple) and any(is_sql(item) for item in value)


@pytest.mark.parametrize("module", [sqlite_sql, postgres_sql], ids=["sqlite", "postgresql"])
def test_every_statement_outside_the_table_has_a_description(module: object) -> None:
    """Module-level statements (DDL, pragmas, the steps of migrations) are described by a
    comment line right above them, as the statements of the table are."""
    path = Path(module.__file__)  # type: ignore[attr-defined]
    source = path.read_text()
    comments = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    undescribed = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name) or target.id == "STATEMENTS":
            continue
        if is_sql(getattr(module, target.id, None)) and node.lineno - 1 not in comments:
            undescribed.append(target.id)
    assert undescribed == []
