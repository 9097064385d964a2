"""``python -m nemo_migrate``: the same command line as ``nemo-migrate``."""

from .cli import main

main()
