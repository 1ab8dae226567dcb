"""``python -m vspfs`` runs the command line, as the ``vspfs`` script does."""

from __future__ import annotations

from vspfs.cli import main

main()
