"""The installed mwnet's version, recorded in every run, checkpoint and model file.

A module of its own, below everything, so that the code that records it (train/) reads
it without importing the package root, which imports the public API built on train/.
``mwnet.__version__`` is this value.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed package's version (pyproject.toml)
    __version__ = version("mwnet")
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
