"""``python -m lanewatch.edge`` is the ``lanewatch`` command."""

from lanewatch.edge.commands.cli import main

raise SystemExit(main())
