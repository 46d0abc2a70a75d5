"""Error type shared by the data package."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset could not be found, read or validated.

    The message is always a single line that names the file or setting at
    fault, what is wrong with it and how to fix it.
    """
