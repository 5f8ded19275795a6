"""The Fashion-MNIST evidence suite: methods x settings x seeds, and the report it writes."""

from mwnet.suite.grid import FULL, METHODS, QUICK, SETTINGS, Cell, Scale, cells
from mwnet.suite.runner import run_cells

__all__ = ["FULL", "METHODS", "QUICK", "SETTINGS", "Cell", "Scale", "cells", "run_cells"]
