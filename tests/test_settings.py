"""The settings table and its resolution: one checked, frozen Settings object per queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqqueue import PostgresQueue, SQLiteQueue, connect
from sqqueue.settings import SETTINGS, Settings, load

NO_FILE = {"SQQUEUE_CONFIG": "none"}


def test_unknown_argument_names_the_closest_setting(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="unknown setting 'lock_timout'; did you mean lock_timeout"
    ):
        SQLiteQueue(tmp_path / "q.db", "jobs", lock_timout=5)
    with pytest.raises(ValueError, match="unknown setting 'max_dept'; did you mean max_depth"):
        connect(tmp_path / "q.db", "jobs", max_dept=5)
    assert not (tmp_path / "q.db").exists()


def test_unknown_argument_without_a_close_one_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known settings: db_path, table_name"):
        load({"zzz": 1}, "sqlite", NO_FILE)


def test_bad_values_are_refused_before_the_file_is_created(tmp_path: Path) -> None:
    for bad in ({"vacuum_threshold": -1}, {"default_priority": 2**40}, {"retry": "fixed"}):
        with pytest.raises(ValueError):
            SQLiteQueue(tmp_path / "q.db", "jobs", **bad)
    assert not (tmp_path / "q.db").exists()


def test_settings_that_do_not_apply_to_postgresql_say_why() -> None:
    for name in ("db_path", "synchronous", "vacuum_on_start"):
        with pytest.raises(ValueError, match=f"{name} does not apply to PostgreSQL: "):
            PostgresQueue("postgresql://nowhere.invalid/db", "jobs", **{name: "x"})


def test_settings_from_the_environment_that_do_not_apply_are_ignored() -> None:
    settings = load({}, "postgresql", {**NO_FILE, "SQQUEUE_SYNCHRONOUS": "full"})
    assert settings["synchronous"] == "full"  # as read; the PostgreSQL queue leaves it be


def test_settings_are_checked_once_and_frozen() -> None:
    settings = load({"dedup_window": "exists", "retention": 60}, "sqlite", NO_FILE)
    assert isinstance(settings, Settings)
    assert settings["dedup_window"] == "exists"  # as given
    assert settings.dedup_window is None  # as the queue uses it: while the message exists
    assert settings.retention == 60.0 and isinstance(settings.retention, float)
    assert settings.sources["retention"] == "argument"
    assert settings.sources["lock_timeout"] == "default"
    assert set(settings) == set(SETTINGS)
    with pytest.raises(AttributeError, match="frozen"):
        settings.retention = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no setting 'nothing'"):
        _ = settings.nothing


def test_every_row_documents_itself_and_where_it_applies() -> None:
    for name, row in SETTINGS.items():
        assert row.name == name and row.help
        assert row.backends <= {"sqlite", "postgresql"} and row.backends
        assert (row.elsewhere != "") == (row.backends != {"sqlite", "postgresql"}), name


def test_queue_exposes_its_settings(tmp_path: Path) -> None:
    with SQLiteQueue(tmp_path / "q.db", "jobs", max_depth=3) as queue:
        assert queue.settings["max_depth"] == 3
        assert queue.settings.max_depth == 3
        assert queue.setting_sources["max_depth"] == "argument"
        assert queue.keeps_history is False


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("vacuum_on_start", "false", "vacuum_on_start must be True or False"),
        ("vacuum_on_start", 2, "vacuum_on_start must be True or False"),
        ("statsd_host", 5, "statsd_host must be a host name"),
        ("statsd_host", "no-such-host.invalid", "statsd_host 'no-such-host.invalid' cannot"),
    ],
)
def test_arguments_of_the_wrong_kind_are_refused_by_name(
    tmp_path: Path, setting: str, value: object, says: str
) -> None:
    """An argument is checked as the same value from the environment would be: the str
    "false" is not taken for true, a host that cannot be looked up is said so."""
    if setting == "statsd_host":
        pytest.importorskip("statsd")
    with pytest.raises(ValueError, match=says):
        SQLiteQueue(tmp_path / "q.db", "jobs", **{setting: value})


def test_an_empty_statsd_host_turns_statsd_off(tmp_path: Path) -> None:
    with SQLiteQueue(tmp_path / "q.db", "jobs", statsd_host="", vacuum_on_start=1) as queue:
        assert queue.statsd_client is None
        assert queue.settings.vacuum_on_start is True
