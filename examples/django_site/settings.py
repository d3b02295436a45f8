"""The smallest Django settings for the example: one app, no database of Django's own."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "example-only-not-secret"  # noqa: S105  (an example site, never deployed)
DEBUG = False
INSTALLED_APPS = ["shop"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Where the shop's tasks go: a path, sqlite:///path or postgresql://... URL.
SQQUEUE_TASKS = os.environ.get("JOBS_DB", str(BASE_DIR / "jobs.db"))
