"""Training runs: the experiment, the loop, its run directory and ``mwnet compare``.

The configuration and presets are :mod:`mwnet.config` (``mwnet.train.config`` is its alias);
a run's data is assembled by :func:`mwnet.data.prepare`.
"""
