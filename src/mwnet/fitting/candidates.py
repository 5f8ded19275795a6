"""The models ``mwnet fit`` trains and chooses among, and why these.

A candidate is a method run with the user's config (same data, split, noise and seed), or
a continuation of another candidate's finished run: trained again without the labels that
run's record flags (``retrain``), or its model fine-tuned on the trusted set
(``finetune``). The lists come from the suite (docs/RESULTS.md and
docs/RESULTS_LEDGER.md, Fashion-MNIST, three seeds): no single method is best
under every kind of noise, but each kind has a winner among a few.

With a trusted set, in order of preference (the first usable one is the default that the
margin rule keeps on near-ties):

- ``finetune-best``: the label-issue source's model (the best weighting run on validation)
  fine-tuned on the trusted set. "MW-Net then fine-tune" was within 0.7 points of the best
  method in every class-conditional setting measured (uniform, flip2 and pair noise, long
  tail, clean labels) and is the default.
- ``l2rw``: best under flip2, pair and annotator-like noise (the per-sample meta gradient
  instead of a curve).
- ``finetune``: CE then fine-tuning on the trusted set; best with a long tail plus noise.
- ``glc``: best under instance-dependent noise (Xia et al.).
- ``retrain``: CE without the source's flagged labels; level with the best in several
  settings, and as cheap as CE.
- ``elr``, ``mwnet``, ``ce``: a robust loss that needs no trusted set, MW-Net alone, and
  the plain reference (best on clean labels).

Without a trusted set: CMW-Net-SL (label correction on a pseudo-meta set), ELR, CE without
the flagged labels of the best of them, GCE, and CE.
"""

from __future__ import annotations

from dataclasses import dataclass

from mwnet.methods import method_names
from mwnet.suite.grid import LABEL_CORRECTION  # as the CMW-Net-SL authors run it


@dataclass(frozen=True)
class Candidate:
    """One model ``fit`` may ship."""

    name: str
    """Its run directory's name, and how ``--candidates`` names it."""
    title: str
    """What the console table calls it."""
    overrides: tuple[str, ...]
    """``key=value`` overrides of this candidate; the user's own override the same keys."""
    after: str | None = None
    """A continuation: the candidate whose run it starts from (``stage`` says how). The
    source is the label-issue run fit picks (see :mod:`mwnet.fit.pipeline`)."""
    stage: str | None = None
    """``retrain`` (CE without the source's flagged labels) or ``finetune`` (the source's
    model fine-tuned on the trusted set)."""

    @property
    def method(self) -> str:
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("method.name="))


FAST = "method.mwnet.hypergrad=fast"
"""The exact hypergradient from one forward-mode product: the same step as ``reverse``, at
about two thirds of its cost (docs/PERFORMANCE.md)."""

L2RW_LR = "optim.lr=0.01"
"""L2RW's learning rate: at the suite's shared 0.05 it went to chance in every setting, and
the suite selected 0.01 in all of them (docs/RESULTS.md); an ``optim.lr`` of the user's
own wins over it."""

WEIGHTING_SOURCE = "weighting"
"""``after`` of a continuation: the label-issue source run, a weighting run where one is
usable (see :func:`mwnet.fitting.pipeline.issue_source`)."""

RETRAIN = Candidate(
    "retrain", "CE without flagged labels", ("method.name=ce",), WEIGHTING_SOURCE, "retrain"
)
"""CE again without the labels the source run's report flags (with or without a trusted
set)."""
ELR = Candidate("elr", "ELR", ("method.name=elr",))
CE = Candidate("ce", "CE", ("method.name=ce",))

WITH_TRUSTED_SET: tuple[Candidate, ...] = (
    Candidate(
        "finetune-best",
        "MW-Net → fine-tune",
        ("method.name=finetune", "optim.epochs=0"),
        after=WEIGHTING_SOURCE,
        stage="finetune",
    ),
    Candidate("l2rw", "L2RW", ("method.name=l2rw", L2RW_LR)),
    Candidate("finetune", "fine-tune", ("method.name=finetune",)),
    Candidate("glc", "GLC", ("method.name=glc",)),
    RETRAIN,
    ELR,
    Candidate("mwnet", "MW-Net", ("method.name=mwnet", FAST)),
    CE,
)
"""Candidates with a trusted set, in order of preference (the first usable one is the
default the margin rule keeps; the rest break exact ties)."""

WITHOUT_TRUSTED_SET: tuple[Candidate, ...] = (
    Candidate("cmwnet-sl", "CMW-Net-SL", ("method.name=cmwnet-sl", FAST, *LABEL_CORRECTION)),
    ELR,
    RETRAIN,
    Candidate("gce", "GCE", ("method.name=gce",)),
    CE,
)
"""Candidates without a trusted set (``data.meta_source=auto``), in order of preference."""


def default_candidates(trusted: bool) -> tuple[Candidate, ...]:
    return WITH_TRUSTED_SET if trusted else WITHOUT_TRUSTED_SET


def select(names: list[str] | tuple[str, ...] | None, trusted: bool) -> tuple[Candidate, ...]:
    """The candidates ``names`` asks for, in the order given (the first is the default):
    a name from the default list, or any registered method (trained with its defaults).
    None: the default list.

    Raises:
        ValueError: an unknown name, a duplicate, or a continuation without a run to
            continue (no other candidate), each with the names that exist.
    """
    known = default_candidates(trusted)
    if names is None:
        return known
    by_name = {c.name: c for c in known}
    out: list[Candidate] = []
    for name in names:
        if name in (c.name for c in out):
            raise ValueError(f"--candidates names {name!r} twice")
        if name in by_name:
            out.append(by_name[name])
        elif name in method_names():
            out.append(Candidate(name, name, (f"method.name={name}",)))
        else:
            listed = ", ".join(by_name)
            raise ValueError(
                f"unknown candidate {name!r}: use one of {listed} (the defaults "
                f"{'with' if trusted else 'without'} a trusted set) or a method name "
                "(`mwnet methods`)"
            )
    if all(c.after is not None for c in out):
        raise ValueError(
            "--candidates lists only continuations ("
            + ", ".join(c.name for c in out)
            + "): add at least one method whose run they continue, e.g. mwnet or ce"
        )
    return tuple(out)
