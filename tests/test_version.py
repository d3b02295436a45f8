"""The version is defined once, in pyproject.toml; the package and the command say the same."""

from __future__ import annotations

import re
from importlib.metadata import entry_points, version
from pathlib import Path

from click.testing import CliRunner

import sqqueue

ROOT = Path(__file__).resolve().parent.parent


def pyproject_version() -> str:
    found = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml has no static version"
    return found.group(1)


def test_package_version_is_pyprojects() -> None:
    assert sqqueue.__version__ == version("sqqueue") == pyproject_version()


def test_cli_version_matches() -> None:
    (script,) = entry_points(group="console_scripts", name="sqqueue")
    result = CliRunner().invoke(script.load(), ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"sqqueue, version {pyproject_version()}"


def test_no_second_copy_of_the_version_in_the_sources() -> None:
    literal = re.escape(pyproject_version())
    copies = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src").rglob("*.py")
        if re.search(rf"[\"']{literal}[\"']", path.read_text())
    ]
    assert copies == []
