"""Data for grukit: the small real datasets bundled with the package (see ``grukit/data/README.md``)."""

from grukit.data.bundled import load, names

__all__ = ["load", "names"]
