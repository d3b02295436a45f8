#!/usr/bin/env python
"""Django's command-line utility for this example site::

JOBS_DB=jobs.db python manage.py runtasks --concurrency 4
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
