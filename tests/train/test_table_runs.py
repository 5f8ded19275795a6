"""A table through the whole loop: train, the label-issue report naming rows by id, training
again without them or with new labels by id, resuming, and predicting on a table file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rounding import gamma, unit_roundoff

from mwnet.cli import main
from mwnet.run.records import read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config
from mwnet.train.experiment import prepare_data

NAMES = ("cat", "dog", "eel")


def write_table(path: Path, n: int = 60, trusted: int = 9, flip: int = 6, seed: int = 0) -> Path:
    """Three clusters in 4 features on unlike scales; after the trusted rows, every
    ``n // flip``-th row's label is moved to the next class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = 3.0 * np.eye(3, 4)[y] + rng.normal(0, 0.4, (n, 4))
    x[:, 3] = 100.0 + 10.0 * x[:, 3]  # a feature far off the others' scale
    given = y.copy()
    wrong = np.arange(trusted, n, max(1, n // flip))[:flip]
    given[wrong] = (y[wrong] + 1) % 3
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "trusted", "f0", "f1", "f2", "f3"])
        for i in range(n):
            writer.writerow([f"row-{i}", NAMES[given[i]], int(i < trusted), *x[i].round(5)])
    return path


def overrides(table: Path, out: Path, name: str, method: str = "mwnet", *extra: str) -> list[str]:
    return [
        "data.dataset=table",
        f"data.table.path={table}",
        "data.table.id_column=id",
        "data.table.trusted_column=trusted",
        "data.batch_size=16",
        "data.meta_batch_size=9",
        "model.name=linear",
        "optim.lr=0.1",
        "optim.epochs=3",
        "optim.milestones=[]",
        f"method.name={method}",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One mwnet run on the table and its label-issue report: (table, run directory)."""
    root = tmp_path_factory.mktemp("table")
    table = write_table(root / "rows.csv")
    assert main(["train", "--quiet", *overrides(table, root, "run")]) == 0
    assert main(["issues", str(root / "run")]) == 0
    return table, root / "run"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_report_names_each_training_row_by_its_id(trained) -> None:
    table, run_dir = trained
    data = prepare_data(load_config(None, overrides(table, run_dir.parent, "x")))
    rows = _rows(run_dir / "label_issues.csv")
    assert list(rows[0])[:3] == ["index", "id", "given_label"]
    assert {r["id"] for r in rows} == set(data.ids) and len(rows) == len(data.ids)
    by_index = dict(zip(data.train_index.tolist(), data.ids, strict=True))
    given = dict(zip(data.ids, data.train_labels.tolist(), strict=True))
    for r in rows:  # index and id name the same row, and its given label is the table's
        assert by_index[int(r["index"])] == r["id"]
        assert int(r["given_label"]) == given[r["id"]] and r["given_class"] == NAMES[given[r["id"]]]
    assert not (run_dir / "label_issues.png").exists()  # rows are no pictures
    model = torch.load(run_dir / "model.pt", weights_only=False)
    assert model["input"]["color"] == "features" and model["classes"] == list(NAMES)
    assert model["input"]["table"]["feature_names"] == ["f0", "f1", "f2", "f3"]


def test_exclude_and_relabel_by_id(trained, tmp_path) -> None:
    table, run_dir = trained
    base = prepare_data(load_config(None, overrides(table, tmp_path, "x")))
    flagged = [r["id"] for r in _rows(run_dir / "label_issues.csv") if r["flagged"] == "1"]
    excluded = prepare_data(
        load_config(None, overrides(table, tmp_path, "x", "mwnet", f"data.exclude={run_dir}"))
    )
    assert set(excluded.ids) == set(base.ids) - set(flagged)
    # a hand-made file of ids: drop two rows; relabel one by name and one by number
    first, second = base.ids[0], base.ids[1]
    (tmp_path / "drop.csv").write_text(f"id\n{first}\n{second}\n")
    dropped = prepare_data(
        load_config(
            None, overrides(table, tmp_path, "x", "ce", f"data.exclude={tmp_path}/drop.csv")
        )
    )
    assert dropped.ids == base.ids[2:]
    (tmp_path / "new.csv").write_text(f"id,label\n{first},eel\n{second},0\n")
    relabelled = prepare_data(
        load_config(None, overrides(table, tmp_path, "x", "ce", f"data.relabel={tmp_path}/new.csv"))
    )
    expected = base.train_labels.clone()
    expected[0], expected[1] = 2, 0
    assert torch.equal(relabelled.train_labels, expected) and relabelled.ids == base.ids
    # a trusted row is no training row: named, not silently ignored
    (tmp_path / "trusted.csv").write_text("id\nrow-0\n")
    with pytest.raises(ValueError, match=r"'row-0'\) are not training rows of this table"):
        prepare_data(
            load_config(
                None, overrides(table, tmp_path, "x", "ce", f"data.exclude={tmp_path}/trusted.csv")
            )
        )


def test_a_resumed_table_run_ends_as_the_straight_one(tmp_path) -> None:
    table = write_table(tmp_path / "rows.csv")
    straight, straight_dir = loop.start(
        load_config(None, overrides(table, tmp_path, "straight")), quiet=True
    )
    straight.fit()
    cut, cut_dir = loop.start(load_config(None, overrides(table, tmp_path, "cut")), quiet=True)
    cut.fit(stop_after=1)
    del cut
    resumed = loop.resume(cut_dir, quiet=True)
    assert resumed.epoch == 1
    resumed.fit()
    timing = ("epoch_time", "wall_time")

    def records(d: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(d)]

    assert records(straight_dir / "metrics.jsonl") == records(cut_dir / "metrics.jsonl")
    for key, value in straight.exp.model.state_dict().items():
        assert torch.equal(value, resumed.exp.model.state_dict()[key]), key


def test_predict_on_a_table_applies_the_training_standardisation(trained, tmp_path, capsys) -> None:
    table, run_dir = trained
    rows = _rows(table)[:7]
    unlabelled = tmp_path / "new.csv"  # no label and no trusted column; columns reordered
    with unlabelled.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["f3", "id", "f0", "f1", "f2"])
        writer.writerows([[r["f3"], r["id"], r["f0"], r["f1"], r["f2"]] for r in rows])
    out = tmp_path / "pred.csv"
    labelled = tmp_path / "labelled.csv"
    with labelled.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "f0", "f1", "f2", "f3"])
        writer.writerows([[r["id"], r["label"], r["f0"], r["f1"], r["f2"], r["f3"]] for r in rows])
    assert main(["predict", str(run_dir), str(labelled), "-o", str(out), "--quiet"]) == 0
    # the columns are found by name: another order, and no label, predict the same
    assert main(["predict", str(run_dir), str(unlabelled), "-o", str(tmp_path / "u.csv")]) == 0
    unlabelled_rows = _rows(tmp_path / "u.csv")
    assert "label" not in unlabelled_rows[0]
    assert [p["probability"] for p in unlabelled_rows] == [p["probability"] for p in _rows(out)]
    (tmp_path / "short.csv").write_text("id,f0,f1,f2\na,1,2,3\n")
    assert main(["predict", str(run_dir), str(tmp_path / "short.csv")]) == 2
    assert "no column 'f3'" in capsys.readouterr().err
    predicted = _rows(out)
    assert [p["id"] for p in predicted] == [r["id"] for r in rows]
    assert [p["label"] for p in predicted] == [r["label"] for r in rows]
    # reference: softmax(W (x - m) / s + b) in float64 from the model file's own numbers
    model = torch.load(run_dir / "model.pt", weights_only=False)
    w = model["state_dict"]["net.1.weight"].double()
    b = model["state_dict"]["net.1.bias"].double()
    m = torch.tensor(model["input"]["normalize"]["mean"], dtype=torch.float64)
    s = torch.tensor(model["input"]["normalize"]["std"], dtype=torch.float64)
    x = torch.tensor([[float(r[f"f{j}"]) for j in range(4)] for r in rows], dtype=torch.float64)
    scaled = (x.float().double() - m) / s  # the float32 features the model is given
    logits = scaled @ w.T + b
    reference = torch.softmax(logits, 1)
    got = torch.tensor([[float(p[f"probability_{k}"]) for k in (1, 2, 3)] for p in predicted])
    order = [[NAMES.index(p[f"class_{k}"]) for k in (1, 2, 3)] for p in predicted]
    ref_sorted = torch.stack([reference[i, order[i]] for i in range(len(rows))])
    # float32: the standardised input is within 4u(|x/s| + |m/s|) of its value (two
    # products, a difference, and 1/s, m/s rounded), each logit within gamma_5 of its
    # 4-term sum of |w x| + |b| plus the inputs' error times |w|; softmax moves a
    # probability by at most 2 max|dz| (it is 1-Lipschitz per logit, summed over two
    # changes) plus a few roundings; the CSV keeps 6 decimals (5e-7).
    u = unit_roundoff(torch.float32)
    dx = 4 * u * (x.abs() / s + m.abs() / s)
    dz = gamma(5, torch.float32) * (scaled.abs() @ w.abs().T + b.abs()) + dx @ w.abs().T
    bound = 2 * dz.max() + 16 * u + 5e-7
    assert (got.double() - ref_sorted).abs().max() <= bound
    # planted: the raw features (no standardisation) predict other probabilities
    raw = torch.softmax(x @ w.T + b, 1)
    assert (raw - reference).abs().max() > 100 * bound
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_samples"] == len(_rows(run_dir / "label_issues.csv"))


def test_an_exported_table_model_gives_the_loaded_models_probabilities(trained, tmp_path) -> None:
    from mwnet.predict.model import load_model

    _, run_dir = trained
    model = load_model(run_dir)
    assert main(["predict", str(run_dir), "--export", str(tmp_path / "m.pt2")]) == 0
    program = torch.export.load(tmp_path / "m.pt2").module()
    rows = torch.randn(5, 4, 1, 1) * torch.tensor([1.0, 1.0, 1.0, 10.0]).view(1, 4, 1, 1) + 1
    # the same float32 operations in the same order: equal bit for bit
    assert torch.equal(program(rows), model.predict_proba(rows))
    with pytest.raises(ValueError, match=r"float32 \(N, 4, 1, 1\)"):
        model.predict_proba(torch.zeros(5, 3, 1, 1))
