"""``MetaWeightClassifier``: Meta-Weight-Net as a scikit-learn classifier."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from mwnet.core.hypergrad import REWEIGHTER_MODES
from mwnet.label_issues import LabelIssues, find_label_issues
from mwnet.sklearn.training import METHODS, TrainingSpec, logits_of, train


class MetaWeightClassifier(ClassifierMixin, BaseEstimator):
    """An MLP trained with Meta-Weight-Net (Shu et al., NeurIPS 2019) on noisy labels.

    Each training step weights every sample's cross-entropy by a small weighting net
    V(loss) that is itself trained, step by step, to lower the loss on a *meta* set
    (:class:`mwnet.MetaReweighter`, the authors' algorithm with the exact hypergradient).
    Samples whose labels the data contradicts end with low weights, so the classifier
    learns mostly from the right labels; after ``fit`` the weights (``weights_``) and a
    label-issue report (``label_issues_``) are there too.

    Where the meta set comes from, in this order:

    1. ``fit(X, y, X_trusted=..., y_trusted=...)``: a trusted set with clean labels, the
       paper's setting;
    2. the constructor's ``X_trusted`` / ``y_trusted``: the same, for tools that call
       ``fit(X, y)`` only (``cross_val_predict``, ``GridSearchCV``, cleanlab's
       ``CleanLearning``): every fold then meta-learns on the same trusted set, which is
       never part of a fold's training data;
    3. neither: no clean data at all. After ``warmup_epochs`` of plain cross-entropy,
       every epoch starts by scoring each training sample's loss on its given label under
       the current model, and the ``pseudo_meta_per_class`` lowest of each given class,
       with their given labels, are that epoch's meta set (CMW-Net-SL's pseudo-meta set,
       Shu et al., TPAMI 2023; :func:`mwnet.data.pseudo_meta.select_pseudo_meta`). Small
       loss usually means a right label, so the set is mostly, not surely, clean.

    Parameters:
        hidden: widths of the MLP's hidden layers (ReLU between them); ``()`` gives a
            linear model.
        epochs: passes over the training set.
        batch_size: training batch size; meta batches have the same size (the whole meta
            set when it is smaller).
        lr, momentum, weight_decay: the classifier's SGD (constant learning rate).
        method: ``"mwnet"`` (1-100-1 weighting net), ``"cmwnet"`` (CMW-Net's class-aware
            net, one head per group of classes by given count: for class imbalance as well
            as noise) or ``"ce"`` (plain cross-entropy, the baseline; it reads no meta set).
        hypergrad: how the weighting net's gradient is computed: ``"fast"`` (forward-mode,
            exact) or ``"reverse"`` (the authors' second-order backward, the same
            gradient); ``"head"``, ``"partial"``, ``"famus"`` are cheaper approximations
            (see :class:`mwnet.MetaReweighter`).
        weight_lr: Adam learning rate of the weighting net (the authors' 1e-3).
        X_trusted, y_trusted: a trusted set given once for every ``fit`` (see above);
            both or neither. Its labels must be classes that ``y`` has.
        pseudo_meta_per_class: without a trusted set, meta samples per given class.
        warmup_epochs: without a trusted set, cross-entropy epochs before the first
            pseudo-meta set is picked (a model that has learned nothing yet ranks the
            losses at random).
        random_state: None, an int or a ``numpy.random.RandomState``; the same int gives
            the same model, weights and predictions (on the same device and torch build).
            Torch's global random state is left as it was.
        device: where ``fit`` trains (``"cpu"``, ``"cuda"``, ...). The fitted model is
            then kept, and predicts, on the CPU, so a pickle loads anywhere.
        threads: torch threads while fitting and predicting (restored afterwards); None
            leaves torch's setting alone. One thread is often fastest on a busy machine.
        verbose: print one line per epoch.

    Attributes:
        classes_: the class labels, sorted (``y`` may hold any labels ``numpy.unique``
            sorts: ints, strings, ...).
        n_features_in_, feature_names_in_: as scikit-learn defines them (the latter only
            when ``X`` is a DataFrame with string column names).
        model_: the trained ``torch.nn.Sequential`` (on the CPU, eval mode).
        weight_net_: the learned weighting net (None for ``method="ce"``).
        weights_: each training sample's weight, averaged over the steps that weighted it
            (without a trusted set: the epochs after the warm-up), in ``X``'s row order;
            all ones for ``method="ce"``. Low means the run trusted the label little.
        label_issues_: :class:`mwnet.LabelIssues` from the run's own per-sample record
            (:func:`mwnet.find_label_issues`): ``score`` (low = likely wrong label),
            ``flagged``, ``noise_rate``; its ``given`` and ``likely`` are indices into
            ``classes_``.
        signals_: the run's per-sample record, :class:`mwnet.SampleSignals` (labels as
            indices into ``classes_``).
        meta_source_: ``"trusted"``, ``"pseudo-meta"`` or None (``method="ce"``).

    Departures from the authors' code: the classifier's learning rate is constant, not
    stepped down; the model is an MLP for tabular or embedding features, not a ResNet;
    the pseudo-meta set is scored by the model itself, not by an EMA teacher (the
    training CLI's default, ``data.pseudo_meta_scorer=teacher``). ``sample_weight`` is
    not accepted: the weights are what the method learns, and a second, given weight
    would change what the weighting net is asked to learn (give duplicated rows, or drop
    rows, instead).
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (100,),
        epochs: int = 30,
        batch_size: int = 100,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        method: str = "mwnet",
        hypergrad: str = "fast",
        weight_lr: float = 1e-3,
        X_trusted: Any = None,
        y_trusted: Any = None,
        pseudo_meta_per_class: int = 100,
        warmup_epochs: int = 2,
        random_state: Any = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.method = method
        self.hypergrad = hypergrad
        self.weight_lr = weight_lr
        self.X_trusted = X_trusted
        self.y_trusted = y_trusted
        self.pseudo_meta_per_class = pseudo_meta_per_class
        self.warmup_epochs = warmup_epochs
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, X_trusted: Any = None, y_trusted: Any = None):
        """Train on ``X`` (n, d) with the possibly noisy labels ``y`` (n,); see the class
        docstring for the trusted set. Returns ``self``.

        Raises:
            ValueError: bad parameters, ``X`` or ``y`` (NaN, wrong shapes, one class,
                non-class targets), half a trusted set, or a trusted label ``y`` lacks.
            FloatingPointError: the training diverged (lower ``lr`` or scale ``X``).
        """
        hidden = self._checked_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"MetaWeightClassifier needs at least two classes in y, got one class "
                f"({self.classes_[0]!r}); there is nothing to tell apart"
            )
        trusted = self._trusted(X_trusted, y_trusted)
        if trusted is None and self.method != "ce" and self.epochs <= self.warmup_epochs:
            raise ValueError(
                f"without a trusted set the weighting starts after warmup_epochs="
                f"{self.warmup_epochs}, but epochs={self.epochs}: raise epochs, lower "
                "warmup_epochs, or pass X_trusted and y_trusted"
            )
        device = torch.device(self.device)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        spec = TrainingSpec(
            hidden=hidden,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=float(self.lr),
            momentum=float(self.momentum),
            weight_decay=float(self.weight_decay),
            method=self.method,
            hypergrad=self.hypergrad,
            weight_lr=float(self.weight_lr),
            pseudo_meta_per_class=self.pseudo_meta_per_class,
            warmup_epochs=self.warmup_epochs,
            seed=seed,
            device=device,
        )
        x_t = torch.tensor(X, dtype=torch.float32, device=device)
        y_t = torch.tensor(encoded, dtype=torch.int64, device=device)
        if trusted is not None:
            trusted = (
                torch.tensor(trusted[0], dtype=torch.float32, device=device),
                torch.tensor(trusted[1], dtype=torch.int64, device=device),
            )
        log = (lambda line: print(line, file=sys.stdout)) if self.verbose else None
        with _torch_threads(self.threads):
            run = train(spec, x_t, y_t, len(self.classes_), trusted, log)
        self.model_ = run.model.cpu()
        self.weight_net_ = None if run.weight_net is None else run.weight_net.cpu()
        self.signals_ = run.signals
        signals = run.signals
        self.weights_ = signals.mean("weight") if signals.has_weights else np.ones(len(y))
        self.label_issues_: LabelIssues = find_label_issues(
            signals, classes=[str(c) for c in self.classes_]
        )
        if self.method == "ce":
            self.meta_source_ = None
        else:
            self.meta_source_ = "pseudo-meta" if trusted is None else "trusted"
        return self

    def _checked_params(self) -> tuple[int, ...]:
        """Validate the constructor's parameters (scikit-learn validates in ``fit``, so
        ``set_params`` and ``GridSearchCV`` may set anything); returns ``hidden`` as a
        tuple."""
        hidden = (self.hidden,) if _is_int(self.hidden) else self.hidden
        if not isinstance(hidden, (tuple, list)) or not all(_is_int(h) and h >= 1 for h in hidden):
            raise ValueError(
                f"hidden must be a tuple of positive layer widths such as (100,) or (), got "
                f"{self.hidden!r}"
            )
        for name in ("epochs", "batch_size", "pseudo_meta_per_class"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(self.warmup_epochs) or self.warmup_epochs < 0:
            raise ValueError(
                f"warmup_epochs must be a non-negative integer, got {self.warmup_epochs!r}"
            )
        for name, low in (("lr", 0.0), ("weight_lr", 0.0)):
            value = getattr(self, name)
            if not _is_real(value) or not value > low:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not _is_real(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not _is_real(self.weight_decay) or not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.hypergrad not in REWEIGHTER_MODES:
            raise ValueError(
                f"hypergrad must be one of {', '.join(REWEIGHTER_MODES)}, got {self.hypergrad!r}"
            )
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be None or a positive integer, got {self.threads!r}")
        return tuple(int(h) for h in hidden)

    def _trusted(self, X_trusted: Any, y_trusted: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The trusted set to meta-learn on, validated against the training data: fit's
        arguments, else the constructor's, else None."""
        where = "fit"
        if X_trusted is None and y_trusted is None:
            X_trusted, y_trusted, where = self.X_trusted, self.y_trusted, "the constructor"
        if X_trusted is None and y_trusted is None:
            return None
        if X_trusted is None or y_trusted is None:
            given, missing = ("X_trusted", "y_trusted")[:: 1 if y_trusted is None else -1]
            raise ValueError(
                f"{given} was given to {where} without {missing}; a trusted set needs both "
                "its inputs and their clean labels (or neither, to pick a pseudo-meta set "
                "from the training data)"
            )
        X_t = validate_data(self, X_trusted, reset=False, dtype=[np.float64, np.float32])
        y_t = column_or_1d(y_trusted, warn=True)
        if len(y_t) != len(X_t):
            raise ValueError(
                f"X_trusted has {len(X_t)} rows but y_trusted {len(y_t)} labels; give one "
                "label per trusted sample"
            )
        known = np.isin(y_t, self.classes_)
        if not known.all():
            unseen = sorted({str(v) for v in y_t[~known]})
            raise ValueError(
                f"y_trusted holds class(es) {', '.join(unseen)} that y does not have (y's "
                f"classes: {', '.join(str(c) for c in self.classes_)}); the classifier "
                "can only be meta-trained on classes it is trained on"
            )
        return X_t, np.searchsorted(self.classes_, y_t)

    # -- prediction ---------------------------------------------------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n, len(classes_)), columns in ``classes_`` order."""
        logits = self._logits(X)
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as a label of ``classes_``."""
        best = self._logits(X).argmax(1).numpy()  # first: it checks that fit has run
        return self.classes_[best]

    def _logits(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        with _torch_threads(self.threads):
            return logits_of(self.model_, torch.tensor(X, dtype=torch.float32))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads, and put the previous setting back."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
