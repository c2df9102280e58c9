"""``python -m grukit ...`` (and ``torchrun ... -m grukit ...``) runs the ``grukit`` command line.

The guard matters: worker processes started with the "spawn" method (``devices=N``) import this module again.
"""

from grukit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
