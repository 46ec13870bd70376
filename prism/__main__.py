"""``python -m prism``: the ``prism`` command, for when its script is not on ``PATH``."""

from __future__ import annotations

from prism.cli.main import main

main()
