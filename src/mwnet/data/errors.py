"""Errors raised by the data layer.

Both derive from ``ValueError`` so that callers who already catch bad-argument errors keep
working, while code that wants to react to missing or damaged data files specifically can
catch :class:`DatasetError` alone.
"""

from __future__ import annotations


class DataError(ValueError):
    """A bad argument or inconsistent input to a data-layer function."""


class DatasetError(DataError):
    """A dataset could not be found, downloaded, or parsed.

    The message always names the file or directory involved and what is wrong with it,
    because the usual fix (re-download, point ``MWNET_DATA`` elsewhere) depends on which
    file is at fault.
    """
