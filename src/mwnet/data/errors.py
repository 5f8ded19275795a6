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


class ConfigError(ValueError):
    """A preset, override or value that cannot be used, with the valid choices.

    Raised by every layer that checks the config: the schema (:mod:`mwnet.config`, which
    re-exports it), the experiment builder, and the data preparation here
    (:func:`mwnet.data.prepare`), whose checks name ``data.*`` keys. It lives in the lowest
    of those layers so that all of them raise the one class without data/ importing the
    layers above it. Not a :class:`DataError`: a config that cannot be used is not a
    damaged file.
    """
