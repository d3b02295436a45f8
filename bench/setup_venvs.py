"""Create the virtualenvs of the benchmark's peers and of sqqueue 0.1.0 (idempotent).

    python3 bench/setup_venvs.py            # creates what is missing or out of date
    python3 bench/setup_venvs.py --force    # recreate them all

bench/.venv-peers       persist-queue, litequeue, localqueue, huey
bench/.venv-pgpeers     PgQueuer (with asyncpg, its documented driver), procrastinate (psycopg)
bench/.venv-sqqueue010  sqqueue 0.1.0 (its own interpreter: same import name as this repo's)

Versions are pinned so runs compare like with like; a venv whose marker file does not list
exactly these pins is rebuilt. litequeue 0.11+ needs Python 3.12: on an older Python the
newest release that installs (0.9) is used instead, and the report shows which one ran.
"""

# ruff: noqa: S603

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

VENVS: dict[str, list[str]] = {
    ".venv-peers": [
        "persist-queue==1.1.0",
        "litequeue==0.14" if sys.version_info >= (3, 12) else "litequeue==0.9",
        "localqueue==1.4.1",
        "huey==3.5.4",
    ],
    ".venv-pgpeers": [
        "pgqueuer[asyncpg]==1.6.0",
        "procrastinate==3.10.0",
        "psycopg[binary,pool]==3.3.9",
        # pgqueuer 1.6.0's `pgq run` fails at start with typer 0.29 (its log-level option
        # arrives as a string): the newest typer it works with here.
        "typer==0.16.0",
    ],
    ".venv-sqqueue010": ["sqqueue==0.1.0"],
}
MARKER = ".bench-installed"


def ensure(name: str, pins: list[str], force: bool) -> None:
    path = os.path.join(HERE, name)
    marker = os.path.join(path, MARKER)
    wanted = "\n".join(pins) + "\n"
    if not force and os.path.exists(marker):
        with open(marker) as f:
            if f.read() == wanted:
                print(f"{name}: up to date ({', '.join(pins)})")
                return
    if os.path.exists(path):
        shutil.rmtree(path)
    print(f"{name}: creating with {', '.join(pins)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    python = os.path.join(path, "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
                   check=True)  # fmt: skip
    with open(marker, "w") as f:
        f.write(wanted)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--force", action="store_true", help="recreate the virtualenvs")
    args = ap.parse_args()
    for name, pins in VENVS.items():
        ensure(name, pins, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
