"""``python -m sqqueue.cli``: the ``sqqueue`` command."""

from . import main

main(prog_name="sqqueue")
