"""mwnet on the example embedding table, against cleanlab on the same rows.

The table is ``examples/table_embeddings.py``'s: 2,000 rows of 24 principal components of
Fashion-MNIST images (synthetic clusters where the dataset is absent), 100 expert-checked
rows, 30 % of the other labels replaced by another class at random, 500 test rows with
their true labels. Per seed (the seed draws the rows, the noise and the training):

* mwnet, from the command line as a user would: ``mwnet compare --retrain`` (CE, MW-Net,
  CE again without the rows MW-Net's report flags) and ``mwnet fit`` with its default
  candidates, every run with the example's settings (a linear model, 8 epochs);
* cleanlab 2.x with scikit-learn's ``LogisticRegression`` on the same standardised
  training rows (the checked rows left out, as mwnet's training set leaves them out):
  ``find_label_issues`` / ``get_label_quality_scores`` on 5-fold out-of-sample
  probabilities, and ``CleanLearning`` (drop its flags, fit again) for accuracy.

Printed: test accuracy on the true labels, and the label-issue AUROC (the report's score
for the rows whose label was replaced), precision and recall of the flags. cleanlab and
scikit-learn are installed into a folder of this benchmark's own when missing, never
into the environment and never by the library or its tests.

    PYTHONPATH=src python benchmarks/bench_table_cleanlab.py --seeds 0 1 2

Measured (AMD EPYC, one torch thread, torch 2.13.0 CPU, cleanlab 2.9.0, scikit-learn
1.9.1, Fashion-MNIST components; seeds 0, 1, 2, mean ± sd): test accuracy CE 0.749 ±
0.024, MW-Net 0.765 ± 0.025, CE without MW-Net's flags 0.764 ± 0.029, ``mwnet fit``
0.763 ± 0.020 (it kept its default, MW-Net then fine-tune, in all three seeds: no other
candidate was ahead beyond the paired error of 190 validation rows); logistic regression
0.754 ± 0.023, cleanlab's CleanLearning 0.764 ± 0.014. Label-issue AUROC: mwnet's report
0.971 ± 0.006 from the MW-Net run and 0.971 ± 0.005 from the CE run, cleanlab 0.969 ±
0.003; flags: precision / recall 0.68 / 0.97 (mwnet, MW-Net run) against 0.74 / 0.89
(cleanlab). On uniform noise over a linear model's embedding, the two rank the wrong rows
equally well; mwnet flags more (its estimated noise rate, 44 %, is above the true 30 %:
8 evaluation passes make a coarse agreement score), cleanlab fewer and more precisely.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mwnet.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(tempfile.gettempdir()) / "mwnet-bench-peers"


def ensure_peers() -> None:
    """cleanlab (and scikit-learn) importable, installed under :data:`PEERS` if missing."""
    sys.path.insert(0, str(PEERS))
    try:
        importlib.import_module("cleanlab")
        importlib.import_module("sklearn")
    except ImportError:
        print(f"installing cleanlab for this benchmark into {PEERS}...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(PEERS), "cleanlab"],
            check=True,
        )
        importlib.invalidate_caches()


def _example():
    sys.path.insert(0, str(ROOT / "examples"))
    import table_embeddings

    return table_embeddings


def _read(path: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    ids, labels, vectors, checked = [], [], [], []
    with path.open() as f:
        for row in csv.DictReader(f):
            ids.append(row["id"])
            labels.append(row["label"])
            vectors.append([float(v) for v in row["embedding"].split()])
            checked.append(row["checked"] == "1")
    return ids, np.array(vectors), labels, np.array(checked)


def _report(path: Path) -> dict[str, tuple[float, bool]]:
    with path.open() as f:
        return {r["id"]: (float(r["score"]), r["flagged"] == "1") for r in csv.DictReader(f)}


def detection(score_by_id: dict[str, float], flagged: set[str], wrong: set[str]) -> dict:
    from mwnet.label_issues.metrics import auroc, precision_recall

    ids = list(score_by_id)
    positives = np.array([i in wrong for i in ids])
    suspicion = -np.array([score_by_id[i] for i in ids])  # low quality: suspicious
    precision, recall = precision_recall(np.array([i in flagged for i in ids]), positives)
    return {"auroc": auroc(suspicion, positives), "precision": precision, "recall": recall}


def mwnet_side(example, out: Path, seed: int) -> dict[str, dict]:
    from mwnet.cli import main

    items, test, wrong, _ = example.write_tables(out, seed=seed)
    shared = [*example.table_settings(items, test, out), f"seed={seed}"]
    with contextlib.redirect_stdout(sys.stderr):  # the runs' own tables: progress, not results
        assert main(["compare", "--retrain", "--jobs=1", "--name=compare", "--top=0", *shared]) == 0
        assert main(["issues", str(out / "compare" / "ce")]) == 0
        assert main(["fit", "--jobs=1", "--name=fit", "--top=0", *shared]) == 0
    runs = json.loads((out / "compare" / "comparison.json").read_text())["runs"]
    acc = {Path(r["run_dir"]).name: r["last_test_acc"] / 100 for r in runs}
    fitted = json.loads((out / "fit" / "fit.json").read_text())
    chosen = next(c for c in fitted["candidates"] if c["name"] == fitted["chosen"])
    result = {
        "accuracy: CE": {"value": acc["ce"]},
        "accuracy: MW-Net": {"value": acc["mwnet"]},
        "accuracy: CE without MW-Net's flags": {"value": acc["ce-without-flagged"]},
        f"accuracy: mwnet fit (chose {chosen['title']})": {"value": chosen["test_acc"] / 100},
    }
    for run in ("mwnet", "ce"):
        report = _report(out / "compare" / run / "label_issues.csv")
        scores = {i: s for i, (s, _) in report.items()}
        flags = {i for i, (_, f) in report.items() if f}
        result[f"issues: mwnet, {run} run"] = detection(scores, flags, wrong)
    return result, items, test, wrong


def cleanlab_side(items: Path, test: Path, wrong: set[str]) -> dict[str, dict]:
    import cleanlab.filter
    import cleanlab.rank
    from cleanlab.classification import CleanLearning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.preprocessing import LabelEncoder, StandardScaler

    ids, x, labels, checked = _read(items)
    _, x_test, test_labels, _ = _read(test)
    keep = ~checked
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    x, labels = x[keep], [lab for lab, k in zip(labels, keep, strict=True) if k]
    scaler = StandardScaler().fit(x)
    x, x_test = scaler.transform(x), scaler.transform(x_test)
    encode = LabelEncoder().fit(labels + test_labels)
    y, y_test = encode.transform(labels), encode.transform(test_labels)
    model = LogisticRegression(max_iter=1000)
    probs = cross_val_predict(model, x, y, cv=5, method="predict_proba")
    quality = cleanlab.rank.get_label_quality_scores(y, probs)
    flagged = cleanlab.filter.find_label_issues(y, probs, n_jobs=1)
    plain = LogisticRegression(max_iter=1000).fit(x, y)
    clean = CleanLearning(clf=LogisticRegression(max_iter=1000), seed=0).fit(x, y)
    return {
        "accuracy: logistic regression": {"value": float((plain.predict(x_test) == y_test).mean())},
        "accuracy: cleanlab CleanLearning": {
            "value": float((clean.predict(x_test) == y_test).mean())
        },
        "issues: cleanlab, 5-fold probabilities": detection(
            dict(zip(ids, quality, strict=True)),
            {i for i, f in zip(ids, flagged, strict=True) if f},
            wrong,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    ensure_peers()
    import cleanlab
    import sklearn

    example = _example()
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        for seed in args.seeds:
            mine, items, test, wrong = mwnet_side(example, base / f"seed{seed}", seed)
            theirs = cleanlab_side(items, test, wrong)
            for name, values in {**mine, **theirs}.items():
                rows.setdefault(name.split(" (chose")[0], []).append(values)
                if "(chose" in name:
                    print(f"seed {seed}: {name}", file=sys.stderr)
    print(
        f"# {cpu_model()}, seeds {args.seeds}, cleanlab "
        f"{cleanlab.__version__}, scikit-learn {sklearn.__version__}"
    )
    print("| row | mean ± sd over seeds |")
    print("|---|---|")
    for name, values in rows.items():
        for key in values[0]:
            v = np.array([float(r[key]) for r in values])
            label = name if key == "value" else f"{name}: {key}"
            print(f"| {label} | {v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} |")


if __name__ == "__main__":
    main()
