"""The training configuration, under its former name: :mod:`mwnet.config` is the module.

The config moved below train/ so that the layers that read a run directory (run/,
label_issues/) can load a run's ``config.yaml`` without importing the training loop. This
name stays an alias of that module (the same module object, so its classes, caches and
pickled schemas are the same), for code written against ``mwnet.train.config``.
"""

import sys

import mwnet.config

sys.modules[__name__] = mwnet.config
