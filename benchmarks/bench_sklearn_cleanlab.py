"""MetaWeightClassifier against cross-entropy and cleanlab on a noisy synthetic table.

The data: ``sklearn.datasets.make_classification`` (10 classes, 30 features of which 20
informative, one cluster per class, standardised), 5,000 training rows whose labels are
corrupted at 40 % (``uniform``: to any other class; ``flip``: to the next class), 2,000
clean test rows. Every side trains the same MLP (``MetaWeightClassifier``'s 30-100-10,
30 epochs of SGD at lr 0.02), on the same corrupted labels, per seed.

Accuracy on the true test labels of:

* ``ce``: ``MetaWeightClassifier(method="ce")``, plain cross-entropy;
* ``mwnet``: ``MetaWeightClassifier()``, no clean data (pseudo-meta sets);
* ``mwnet+trusted``: the same with 100 more rows given their true labels as the trusted
  set (the paper's setting; these rows are not in the training set);
* ``cleanlab CL(ce)``: cleanlab's ``CleanLearning(clf=<the ce model>)``: 5-fold
  out-of-sample probabilities, its flagged rows dropped, the model trained again.

Label-issue detection on the training rows (AUROC of each score for the corrupted labels;
precision and recall of the flags; the estimated noise rate), from:

* ``mwnet``: the fitted ``label_issues_`` of the ``mwnet`` run (its own record, no extra
  training); ``mwnet weight``: its ``weights_`` as the score;
* ``cleanlab``: ``cleanlab.filter.find_label_issues`` (flags) and
  ``cleanlab.rank.get_label_quality_scores`` (score) on 5-fold ``cross_val_predict``
  probabilities of the ``ce`` model.

CPU time of each side (``time.process_time``: this process, one torch thread, so a
machine busy with other work does not inflate it), after one small warm-up fit that pays
torch's first-call costs. cleanlab is installed here if
missing (``pip install cleanlab``), never by the library or its tests.

    PYTHONPATH=src python benchmarks/bench_sklearn_cleanlab.py --seeds 0 1 2

Measured (AMD EPYC, one torch thread, torch 2.13.0 CPU, scikit-learn 1.9.1, cleanlab
2.9.0; seeds 0, 1, 2, mean ± sd), test accuracy on the true labels:

=====================  ===============  ===============
side                   uniform 40 %     flip 40 %
=====================  ===============  ===============
ce                     0.839 ± 0.009    0.596 ± 0.013
mwnet (no clean data)  0.897 ± 0.017    0.805 ± 0.025
mwnet+trusted (100)    0.896 ± 0.019    0.832 ± 0.014
cleanlab CL(ce)        0.895 ± 0.021    0.688 ± 0.022
=====================  ===============  ===============

and label-issue AUROC: mwnet's report 0.986 ± 0.003 (uniform) and 0.934 ± 0.023 (flip),
its mean weight 0.987 and 0.946, cleanlab on 5-fold probabilities 0.980 ± 0.003 and
0.690 ± 0.020 (flags: precision/recall 0.90/0.97 and 0.83/0.89 for mwnet, 0.91/0.89 and
0.57/0.65 for cleanlab). CPU seconds per seed: ce 0.6, mwnet 3.8 to 4.8, CleanLearning
2.7 to 3.3, cleanlab's cross-validated probabilities 2.5 to 2.8. Under flip noise the
cross-validated model cleanlab reads is itself trained on the systematically flipped
labels (cross-entropy's accuracy: 0.60), and its ranking falls with it; mwnet's record
comes from a run whose weights had already set most wrong labels aside.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from bench_label_issues import ensure_cleanlab  # the benchmark beside this one

from mwnet.machine import cpu_model

FOLDS = 5
NOISE = 0.4
CLASSES = 10


def noisy_table(seed: int, kind: str, train: int = 5000, test: int = 2000, trusted: int = 100):
    """Standardised features and labels: the training rows' labels corrupted at
    :data:`NOISE`, the trusted and test rows' left clean."""
    from sklearn.datasets import make_classification
    from sklearn.preprocessing import StandardScaler

    n = train + test + trusted
    X, truth = make_classification(
        n_samples=n,
        n_features=30,
        n_informative=20,
        n_redundant=5,
        n_classes=CLASSES,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    X = StandardScaler().fit_transform(X)
    rng = np.random.default_rng(seed)
    corrupt = rng.random(train) < NOISE
    if kind == "uniform":
        other = (truth[:train] + rng.integers(1, CLASSES, train)) % CLASSES
    else:
        other = (truth[:train] + 1) % CLASSES
    noisy = np.where(corrupt, other, truth[:train])
    parts = {
        "train": (X[:train], noisy, truth[:train]),
        "test": (X[train : train + test], truth[train : train + test]),
        "trusted": (X[train + test :], truth[train + test :]),
    }
    return parts


def detection(score: np.ndarray, flagged: np.ndarray | None, corrupted: np.ndarray) -> dict:
    """AUROC of ``score`` (low = suspect) for the corrupted labels, and of the flags (if
    any) their precision, recall and share (the estimated noise rate)."""
    from mwnet.label_issues import auroc, precision_recall

    out = {"auroc": auroc(-score, corrupted)}
    if flagged is not None:
        precision, recall = precision_recall(flagged, corrupted)
        out.update(precision=precision, recall=recall, noise=float(flagged.mean()))
    return out


def one_seed(seed: int, kind: str) -> dict[str, dict[str, float]]:
    import cleanlab.filter
    import cleanlab.rank
    from cleanlab.classification import CleanLearning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from mwnet.sklearn import MetaWeightClassifier

    data = noisy_table(seed, kind)
    X, noisy, truth = data["train"]
    X_test, y_test = data["test"]
    X_trusted, y_trusted = data["trusted"]
    corrupted = noisy != truth
    out: dict[str, dict[str, float]] = {}

    def timed(name: str, fit) -> Any:
        start = time.process_time()
        model = fit()
        out[name] = {"cpu_s": time.process_time() - start}
        return model

    ce = timed("ce", lambda: MetaWeightClassifier(method="ce", random_state=seed).fit(X, noisy))
    mw = timed("mwnet", lambda: MetaWeightClassifier(random_state=seed).fit(X, noisy))
    trusted = timed(
        "mwnet+trusted",
        lambda: MetaWeightClassifier(random_state=seed).fit(X, noisy, X_trusted, y_trusted),
    )
    clean = timed(
        "cleanlab CL(ce)",
        lambda: CleanLearning(
            clf=MetaWeightClassifier(method="ce", random_state=seed), cv_n_folds=FOLDS, seed=seed
        ).fit(X, noisy),
    )
    for name, model in (("ce", ce), ("mwnet", mw), ("mwnet+trusted", trusted)):
        out[name]["accuracy"] = model.score(X_test, y_test)
    out["cleanlab CL(ce)"]["accuracy"] = float((clean.predict(X_test) == y_test).mean())

    issues = mw.label_issues_
    out["issues: mwnet"] = detection(issues.score, issues.flagged, corrupted)
    out["issues: mwnet weight"] = detection(mw.weights_, None, corrupted)
    start = time.process_time()
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    probs = cross_val_predict(
        MetaWeightClassifier(method="ce", random_state=seed),
        X,
        noisy,
        cv=folds,
        method="predict_proba",
    )
    flagged = cleanlab.filter.find_label_issues(noisy, probs, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(noisy, probs)
    out["issues: cleanlab"] = detection(quality, flagged, corrupted)
    out["issues: cleanlab"]["cpu_s"] = time.process_time() - start
    out["issues: mwnet"]["cpu_s"] = out["mwnet"]["cpu_s"]
    out["issues: mwnet"]["true noise"] = float(corrupted.mean())
    return out


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for side in runs[0]:
        table[side] = {}
        for metric in runs[0][side]:
            values = [r[side][metric] for r in runs]
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            table[side][metric] = f"{mean:.3f} ± {sd:.3f}" if metric != "cpu_s" else f"{mean:.1f}"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", nargs="+", default=["uniform", "flip"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cleanlab = ensure_cleanlab()
    import sklearn

    from mwnet.sklearn import MetaWeightClassifier

    warm = noisy_table(0, "uniform", train=200, test=10, trusted=10)["train"]
    MetaWeightClassifier(epochs=3, random_state=0).fit(warm[0], warm[1])

    print(
        f"CPU: {cpu_model()}, {args.threads} torch thread(s); torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}, cleanlab {cleanlab.__version__}; "
        f"seeds {args.seeds}; mean ± sd over the seeds"
    )
    for kind in args.noise:
        runs = [one_seed(seed, kind) for seed in args.seeds]
        print(f"\n## {kind} noise, {NOISE:.0%} of 5,000 training labels\n")
        for side, metrics in summarise(runs).items():
            print(f"{side:22s} " + "  ".join(f"{k} {v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
