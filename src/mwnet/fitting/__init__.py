"""``mwnet fit``: train the candidates, find the label issues, ship the model chosen on
validation data (:func:`mwnet.fitting.pipeline.fit`, also ``mwnet.fit``).

Nothing is imported here: the command line registers ``mwnet fit`` from
:mod:`mwnet.fitting.command` without the training extras, so that a missing one is named
when the command runs, not when ``mwnet --help`` builds its parser."""
