"""``python -m edge`` is the ``lanewatch`` command."""

from edge.cli import main

raise SystemExit(main())
