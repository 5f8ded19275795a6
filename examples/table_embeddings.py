"""Noisy labels in a table of embeddings: `mwnet compare --retrain` on a CSV file.

Builds the kind of table most people with noisy labels have: one row per item, an id, a
label column filled by (here: simulated) annotators, a flag on the few rows an expert
checked, and a vector per item from some encoder. The vectors are the 24 principal
components of Fashion-MNIST images when the dataset is on this machine (found where
mwnet looks for it, never downloaded), else points around 10 random centres; either way
numpy alone makes them. 30 % of the unchecked labels are then replaced by another class
at random, and the example runs

    mwnet compare --retrain data.dataset=table data.table.path=items.csv ...

(plain training, Meta-Weight-Net, and plain training again without the rows the report
flags), then says how many of the flagged rows really were mislabelled: the noise is
synthetic here, so the truth is known.

    python examples/table_embeddings.py [OUT_DIR]
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from mwnet.cli import main

CLASSES_PER_TABLE = 10
TRUSTED_PER_CLASS = 10
TRAIN_ROWS, TEST_ROWS = 2000, 500
NOISE = 0.3
DIMENSIONS = 24


def embeddings(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(vectors, true labels, class names, where they came from)."""
    n = TRAIN_ROWS + TEST_ROWS
    try:
        from mwnet.data import FASHION_MNIST_CLASSES, load_dataset

        images = load_dataset("fashion-mnist", "train", download=False)
        pick = rng.choice(len(images), size=n, replace=False)
        pixels = images.images[pick].reshape(n, -1).numpy().astype(np.float64) / 255
        centred = pixels - pixels.mean(0)
        _, _, basis = np.linalg.svd(centred[:2000], full_matrices=False)
        vectors = centred @ basis[:DIMENSIONS].T
        labels = images.labels[pick].numpy()
        names = [c.replace("/", "-") for c in FASHION_MNIST_CLASSES]
        return vectors, labels, names, "Fashion-MNIST principal components"
    except (OSError, ValueError):  # no dataset here: clusters instead
        labels = rng.integers(0, CLASSES_PER_TABLE, n)
        centres = rng.normal(0, 0.7, (CLASSES_PER_TABLE, DIMENSIONS))
        vectors = centres[labels] + rng.normal(0, 1, (n, DIMENSIONS))
        names = [f"class-{k}" for k in range(CLASSES_PER_TABLE)]
        return vectors, labels, names, "synthetic clusters"


def write_tables(out: Path, seed: int = 0) -> tuple[Path, Path, set[str], str]:
    """items.csv (noisy labels, trusted flags) and test.csv (true labels); returns them,
    the ids of the mislabelled rows, and where the vectors came from."""
    rng = np.random.default_rng(seed)
    vectors, labels, names, source = embeddings(rng)
    k = len(names)
    given = labels.copy()
    trusted = np.zeros(len(labels), dtype=bool)
    for c in range(k):  # the expert-checked rows: the first few of each class
        trusted[np.flatnonzero(labels[:TRAIN_ROWS] == c)[:TRUSTED_PER_CLASS]] = True
    flip = (rng.random(len(labels)) < NOISE) & ~trusted
    flip[TRAIN_ROWS:] = False  # the test rows keep their true labels
    given[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k  # another class
    ids = [f"item-{i:05d}" for i in range(len(labels))]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("items.csv", range(TRAIN_ROWS)), ("test.csv", range(TRAIN_ROWS, len(ids)))):
        path = out / name
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label", "checked", "embedding"])
            for i in rows:
                vector = " ".join(f"{v:.5g}" for v in vectors[i])
                writer.writerow([ids[i], names[given[i]], int(trusted[i]), vector])
        paths.append(path)
    wrong = {ids[i] for i in np.flatnonzero(given[:TRAIN_ROWS] != labels[:TRAIN_ROWS])}
    return paths[0], paths[1], wrong, source


def table_settings(items: Path, test: Path, out: Path) -> list[str]:
    """The runs' settings: the table's columns, a linear model, 8 epochs, one thread."""
    return [
        "data.dataset=table",
        f"data.table.path={items}",
        f"data.table.test_path={test}",
        "data.table.id_column=id",
        "data.table.label_column=label",
        "data.table.trusted_column=checked",
        "data.table.embedding_column=embedding",
        "model.name=linear",
        "optim.lr=0.1",
        "optim.epochs=8",
        "optim.milestones=[]",
        "data.meta_batch_size=50",
        "threads=1",
        f"out_dir={out}",
    ]


def run(out: Path) -> int:
    items, test, wrong, source = write_tables(out)
    print(f"table: {items} ({TRAIN_ROWS} rows, vectors: {source}, {len(wrong)} labels wrong)")
    code = main(
        [
            "compare",
            "--retrain",
            "--jobs=1",
            "--name=compare",
            *table_settings(items, test, out),
        ]
    )
    if code:
        return code
    with (out / "compare" / "mwnet" / "label_issues.csv").open() as f:
        report = list(csv.DictReader(f))  # most suspicious first
    top = report[:5]
    print(
        "most suspicious rows: "
        + "; ".join(f"{r['id']} {r['given_class']} -> {r['likely_class']}" for r in top)
        + f" ({sum(r['id'] in wrong for r in top)} of {len(top)} mislabelled)"
    )
    flagged = {r["id"] for r in report if r["flagged"] == "1"}
    found = len(flagged & wrong)
    print(
        f"flagged rows that were mislabelled: {found} of {len(flagged)} "
        f"({found / len(flagged):.3f}); wrong labels found: {found} of {len(wrong)} "
        f"({found / len(wrong):.3f})"
    )
    runs = json.loads((out / "compare" / "comparison.json").read_text())["runs"]
    accuracy = {Path(r["run_dir"]).name: r["last_test_acc"] for r in runs}
    print("test accuracy on true labels: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(run(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(run(Path(tmp)))
