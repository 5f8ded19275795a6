""":class:`mwnet.sklearn.MetaWeightClassifier` in scikit-learn's machinery, and what it
learns: labels of any kind, the trusted set's routes, determinism, pickling, pipelines,
cross-validation, grid search, its weights and label issues, and clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from reliability import Row, covers_each

from mwnet.core import MetaReweighter
from mwnet.label_issues import auroc

try:  # the module still imports without the extra, so that every case registers
    import sklearn
except ImportError:
    sklearn = None

pytestmark = pytest.mark.skipif(sklearn is None, reason="needs scikit-learn, mwnet[sklearn]")

if sklearn is not None:
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.model_selection import GridSearchCV, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import mwnet.sklearn.classifier as classifier_module
    from mwnet.sklearn import MetaWeightClassifier

FAST = {"epochs": 8, "batch_size": 50}
"""Enough for the plumbing tests; the learning test trains longer."""


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noisy_problem(seed: int, n: int = 400, features: int = 10, noise: float = 0.4):
    """Four learnable classes (class c shifts feature c by 3) whose observed labels are
    flipped to the next class with probability ``noise``: ``(X, noisy, truth)``."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n)
    X = rng.normal(size=(n, features))
    X[np.arange(n), truth] += 3.0
    noisy = np.where(rng.random(n) < noise, (truth + 1) % 4, truth)
    return X, noisy, truth


def test_beats_cross_entropy_under_40_percent_noise_by_more_than_the_seed_spread() -> None:
    """Test accuracy against the true labels, MW-Net (no clean data: pseudo-meta sets)
    against plain cross-entropy, on three seeds (data, noise and training all vary).

    The claim is the paired gain's mean exceeding t(0.95, 2 dof) = 2.92 standard errors
    of the mean over the seeds: the seeds' own spread sets the margin. Measured: gains
    0.280, 0.308, 0.275 (mean 0.29, s.e. 0.01; accuracies 0.90 to 0.94 against 0.63 to
    0.65). A weighting that did nothing would be CE (gain 0); the weights must also favour
    the right labels on every seed."""
    gains = []
    for seed in range(3):
        X, noisy, truth = noisy_problem(seed, n=1200)
        fit, test = slice(0, 800), slice(800, None)
        scores = {}
        for method in ("ce", "mwnet"):
            clf = MetaWeightClassifier(method=method, epochs=20, random_state=seed)
            clf.fit(X[fit], noisy[fit])
            scores[method] = clf.score(X[test], truth[test])
        wrong = noisy[fit] != truth[fit]
        assert clf.weights_[~wrong].mean() > 1.5 * clf.weights_[wrong].mean(), seed
        gains.append(scores["mwnet"] - scores["ce"])
    gains = np.array(gains)
    standard_error = gains.std(ddof=1) / np.sqrt(len(gains))
    assert gains.mean() > 2.92 * standard_error, gains


def test_string_labels_train_exactly_as_their_sorted_integer_codes() -> None:
    """Labels are encoded as numpy.unique sorts them (LabelEncoder's rule): fitting on
    names must give bit-for-bit the model fitted on their sorted positions. A planted
    first-appearance encoding (the first row's label as class 0) gives other codes here,
    so other targets and another model."""
    X, noisy, _ = noisy_problem(1)
    names = np.array(["owl", "cat", "fox", "dog"])  # sorted: cat dog fox owl
    y = names[noisy]
    codes = np.searchsorted(np.sort(names), y)
    by_name = MetaWeightClassifier(random_state=0, **FAST).fit(X, y)
    by_code = MetaWeightClassifier(random_state=0, **FAST).fit(X, codes)
    assert by_name.classes_.tolist() == ["cat", "dog", "fox", "owl"]
    np.testing.assert_array_equal(by_name.predict_proba(X), by_code.predict_proba(X))
    np.testing.assert_array_equal(by_name.predict(X), by_name.classes_[by_code.predict(X)])
    first_seen = {label: i for i, label in enumerate(dict.fromkeys(y.tolist()))}
    assert [first_seen[c] for c in by_name.classes_] != [0, 1, 2, 3]  # the planted bug differs
    np.testing.assert_array_equal(by_name.label_issues_.given, codes)


def test_predict_proba_is_the_softmax_of_the_model_and_predict_its_argmax() -> None:
    """Against a float64 softmax written here: rows sum to 1 within float64 rounding of a
    4-term sum (a few ulps of 1), and predict is the column of the largest probability."""
    X, noisy, _ = noisy_problem(2)
    clf = MetaWeightClassifier(random_state=0, **FAST).fit(X, noisy)
    with torch.no_grad():
        logits = clf.model_(torch.tensor(X, dtype=torch.float32)).double().numpy()
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba, expected, rtol=1e-12, atol=0)  # both float64 softmax
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=0, atol=8 * np.finfo(np.float64).eps)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[expected.argmax(1)])


def test_trusted_set_in_the_constructor_is_the_trusted_set_given_to_fit() -> None:
    """The constructor's trusted set (for fit(X, y)-only callers) trains exactly as the
    same set given to fit, and differs from the pseudo-meta run (a constructor set that
    was ignored would fall back to it)."""
    X, noisy, truth = noisy_problem(3)
    X_t, y_t = X[:40], truth[:40]
    via_fit = MetaWeightClassifier(random_state=0, **FAST).fit(X[40:], noisy[40:], X_t, y_t)
    via_init = MetaWeightClassifier(random_state=0, X_trusted=X_t, y_trusted=y_t, **FAST)
    via_init.fit(X[40:], noisy[40:])
    pseudo = MetaWeightClassifier(random_state=0, **FAST).fit(X[40:], noisy[40:])
    np.testing.assert_array_equal(via_fit.predict_proba(X), via_init.predict_proba(X))
    np.testing.assert_array_equal(via_fit.weights_, via_init.weights_)
    assert via_init.meta_source_ == "trusted" and pseudo.meta_source_ == "pseudo-meta"
    assert not np.array_equal(pseudo.predict_proba(X), via_init.predict_proba(X))


def test_weights_are_each_samples_mean_over_the_steps_that_weighted_it(monkeypatch) -> None:
    """Every reweighter step is recorded here with its batch's rows; each row is matched
    back to its sample by value (the rows are distinct), and the mean of the weights it
    got must be ``weights_`` at that sample's position. A record by batch position instead
    of sample index (shuffled batches) would put the weights on the wrong samples."""
    X, noisy, truth = noisy_problem(4, n=120)
    steps = []
    original = MetaReweighter.step

    def recording_step(self, x, y, *args, **kwargs):
        result = original(self, x, y, *args, **kwargs)
        steps.append((x.clone(), result.weights.clone()))
        return result

    monkeypatch.setattr(MetaReweighter, "step", recording_step)
    clf = MetaWeightClassifier(random_state=0, epochs=3, batch_size=50)
    clf.fit(X, noisy, X[:20], truth[:20])
    rows = {tuple(r): i for i, r in enumerate(torch.tensor(X, dtype=torch.float32).tolist())}
    assert len(rows) == len(X)
    total, count = np.zeros(len(X)), np.zeros(len(X))
    for x, w in steps:
        for row, weight in zip(x.tolist(), w.tolist(), strict=True):
            total[rows[tuple(row)]] += weight
            count[rows[tuple(row)]] += 1
    assert (count == 3).all()  # three epochs, each sample once per epoch
    # float64 sums of 3 float32 weights in (0, 1): within 2 gamma_3 of each other
    np.testing.assert_allclose(clf.weights_, total / 3, rtol=0, atol=6 * np.finfo(float).eps)


def test_weights_and_label_issues_point_at_the_wrong_labels() -> None:
    X, noisy, truth = noisy_problem(5, n=800)
    wrong = noisy != truth
    clf = MetaWeightClassifier(random_state=0, epochs=20).fit(X, noisy)
    issues = clf.label_issues_
    assert clf.weights_.shape == (len(X),) and ((clf.weights_ > 0) & (clf.weights_ < 1)).all()
    # measured: AUROC 0.98 for both, 0.92 of the flagged wrong; chance is 0.5 and 0.4
    assert auroc(-clf.weights_, wrong) > 0.9
    assert auroc(-issues.score, wrong) > 0.9
    assert (issues.flagged & wrong).sum() > 0.8 * issues.flagged.sum()
    ce = MetaWeightClassifier(method="ce", random_state=0, **FAST).fit(X, noisy)
    assert (ce.weights_ == 1.0).all() and ce.weight_net_ is None and ce.meta_source_ is None


def test_same_random_state_same_model_and_torch_state_left_alone(monkeypatch) -> None:
    X, noisy, _ = noisy_problem(6)
    rng_before = torch.get_rng_state()
    first = MetaWeightClassifier(random_state=7, **FAST).fit(X, noisy)
    assert torch.equal(torch.get_rng_state(), rng_before)
    second = MetaWeightClassifier(random_state=7, **FAST).fit(X, noisy)
    other = MetaWeightClassifier(random_state=8, **FAST).fit(X, noisy)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    np.testing.assert_array_equal(first.weights_, second.weights_)
    assert not np.array_equal(first.predict_proba(X), other.predict_proba(X))

    seen = []
    train = classifier_module.train

    def counting_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "train", counting_train)
    torch.set_num_threads(2)
    MetaWeightClassifier(random_state=7, threads=1, **FAST).fit(X, noisy)
    assert seen == [1] and torch.get_num_threads() == 2


def test_pickled_after_fit_predicts_the_same() -> None:
    X, noisy, _ = noisy_problem(7)
    clf = MetaWeightClassifier(random_state=0, **FAST).fit(X, noisy.astype(str))
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_array_equal(loaded.weights_, clf.weights_)
    np.testing.assert_array_equal(loaded.label_issues_.score, clf.label_issues_.score)
    unfitted = clone(clf)
    assert unfitted.get_params() == clf.get_params() and not hasattr(unfitted, "model_")


def test_pipeline_with_a_scaler_is_the_classifier_on_scaled_features() -> None:
    """Features on a scale far from the unit one (x 50, + 200) are what the scaler is for;
    the pipeline must be exactly the classifier fitted on the scaler's output."""
    X, noisy, truth = noisy_problem(8)
    X = 50.0 * X + 200.0
    pipe = make_pipeline(StandardScaler(), MetaWeightClassifier(random_state=0, **FAST))
    pipe.fit(X, noisy)
    scaled = StandardScaler().fit_transform(X)
    alone = MetaWeightClassifier(random_state=0, **FAST).fit(scaled, noisy)
    np.testing.assert_array_equal(pipe.predict_proba(X), alone.predict_proba(scaled))
    assert pipe.score(X, truth) > 0.5  # chance is 0.25; measured 0.67 (8 epochs only)


def test_cross_val_predict_with_a_trusted_set_in_the_constructor() -> None:
    X, noisy, truth = noisy_problem(9, n=500)
    clf = MetaWeightClassifier(random_state=0, X_trusted=X[:50], y_trusted=truth[:50], **FAST)
    proba = cross_val_predict(clf, X[50:], noisy[50:], cv=3, method="predict_proba")
    assert proba.shape == (450, 4)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=0, atol=8 * np.finfo(np.float64).eps)
    # Out-of-fold predictions against the truth: rows put back in the wrong order would
    # score near chance (0.25); measured 0.77 (CE: 0.66; 300 samples a fold, 40 % noise).
    assert (proba.argmax(1) == truth[50:]).mean() > 0.5


def test_grid_search_over_a_parameter() -> None:
    X, noisy, _ = noisy_problem(10, n=300)
    search = GridSearchCV(
        MetaWeightClassifier(random_state=0, **FAST), {"hidden": [(), (32,)]}, cv=2
    )
    search.fit(X, noisy)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_estimator_.hidden == search.best_params_["hidden"]
    linear = [m for m in search.best_estimator_.model_ if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 + len(search.best_params_["hidden"])


def test_a_dataframe_gives_feature_names() -> None:
    pd = pytest.importorskip("pandas")
    X, noisy, _ = noisy_problem(11, n=200)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = MetaWeightClassifier(random_state=0, **FAST).fit(frame, noisy)
    assert clf.feature_names_in_.tolist() == list(frame.columns) and clf.n_features_in_ == 10


def test_verbose_prints_one_line_per_epoch(capsys) -> None:
    X, noisy, _ = noisy_problem(12, n=100)
    MetaWeightClassifier(random_state=0, epochs=3, pseudo_meta_per_class=10, verbose=True).fit(
        X, noisy
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"epoch {e}/3" for e in (1, 2, 3)]
    assert "no weighting" in lines[1] and "meta set 40" in lines[2]  # warm-up, then 10 x 4


X0, Y0, T0 = noisy_problem(13, n=60)


@pytest.mark.parametrize(
    ("fit_args", "match"),
    [
        ((np.where(np.eye(60, 10) > 0, np.nan, X0), Y0), "Input X contains NaN"),
        ((X0[:, 0], Y0), "Expected 2D array, got 1D array"),
        ((X0, Y0[:50]), "inconsistent numbers of samples"),
        ((X0, Y0 + 0.5), "Unknown label type"),
        ((X0, Y0, X0[:5, :3], T0[:5]), "X has 3 features, but MetaWeightClassifier"),
    ],
)
def test_data_scikit_learn_rejects_is_rejected_with_its_message(fit_args, match) -> None:
    with pytest.raises(ValueError, match=match):
        MetaWeightClassifier().fit(*fit_args)


@covers_each(
    [
        Row(
            "bad input",
            "MetaWeightClassifier.fit with y of one class",
            "ValueError: MetaWeightClassifier needs at least two classes in y, got one class",
            ({}, (X0, np.zeros(60, dtype=int)), "at least two classes in y, got one class"),
        ),
        Row(
            "bad input",
            "MetaWeightClassifier.fit(X, y, X_trusted) without y_trusted",
            "ValueError: X_trusted was given to fit without y_trusted; a trusted set needs both",
            ({}, (X0, Y0, X0[:5]), "X_trusted was given to fit without y_trusted"),
        ),
        Row(
            "bad input",
            "MetaWeightClassifier(y_trusted=...) without X_trusted",
            "ValueError: y_trusted was given to the constructor without X_trusted",
            ({"y_trusted": T0[:5]}, (X0, Y0), "y_trusted was given to the constructor"),
        ),
        Row(
            "bad input",
            "MetaWeightClassifier with a trusted label that y does not have",
            "ValueError: y_trusted holds class(es) 9 that y does not have (y's classes: 0, 1, "
            "2, 3)",
            ({}, (X0, Y0, X0[:5], np.array([0, 1, 2, 3, 9])), "class\\(es\\) 9 that y"),
        ),
        Row(
            "bad input",
            "MetaWeightClassifier with 5 trusted rows and 4 trusted labels",
            "ValueError: X_trusted has 5 rows but y_trusted 4 labels",
            ({}, (X0, Y0, X0[:5], T0[:4]), "5 rows but y_trusted 4"),
        ),
        Row(
            "bad input",
            "MetaWeightClassifier(epochs=2) with no trusted set (warm-up of 2 epochs)",
            "ValueError: without a trusted set the weighting starts after warmup_epochs=2, but "
            "epochs=2: raise epochs, lower warmup_epochs, or pass X_trusted and y_trusted",
            ({"epochs": 2}, (X0, Y0), "warmup_epochs=2, but epochs=2"),
        ),
        Row(
            "bad input",
            "MetaWeightClassifier(hidden=(0,))",
            "ValueError: hidden must be a tuple of positive layer widths such as (100,) or (), "
            "got (0,)",
            ({"hidden": (0,)}, (X0, Y0), "hidden must be a tuple of positive layer widths"),
        ),
    ]
)
def test_bad_input_is_a_clear_error(row) -> None:
    params, fit_args, match = row.args
    with pytest.raises(ValueError, match=match):
        MetaWeightClassifier(**params).fit(*fit_args)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"method": "focal"}, "method must be one of mwnet, cmwnet, ce, got 'focal'"),
        ({"lr": 0}, "lr must be a positive number"),
        ({"threads": 0}, "threads must be None or a positive integer"),
        ({"hypergrad": "exact"}, "hypergrad must be one of"),
    ],
)
def test_each_bad_parameter_is_named(params, match) -> None:
    with pytest.raises(ValueError, match=match):
        MetaWeightClassifier(**params).fit(X0, Y0)


def test_predicting_before_fit_or_with_other_features_is_refused() -> None:
    with pytest.raises(NotFittedError):
        MetaWeightClassifier().predict(X0)
    clf = MetaWeightClassifier(random_state=0, epochs=3).fit(X0, Y0)
    with pytest.raises(ValueError, match="X has 3 features, but MetaWeightClassifier is"):
        clf.predict(X0[:, :3])


def test_cleanlab_clean_learning_wraps_the_classifier() -> None:
    filter_ = pytest.importorskip("cleanlab.classification")
    X, noisy, _ = noisy_problem(14, n=300)
    clean = filter_.CleanLearning(clf=MetaWeightClassifier(random_state=0, **FAST), cv_n_folds=3)
    clean.fit(X, noisy)
    assert clean.predict(X).shape == (300,)
    assert len(clean.get_label_issues()) == 300
