"""``python -m grukit ...`` runs the ``grukit`` command line."""

from grukit.cli import main

raise SystemExit(main())
