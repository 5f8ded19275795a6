"""Tables as data: every format read to the same rows, the sets a run gets from them, and
one line naming the row, the column and the fix for every way a table can be wrong."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mwnet.config import load_config
from mwnet.data import DeviceBatches, Normalize, is_features, prepare, to_float
from mwnet.data.errors import ConfigError, DatasetError
from mwnet.data.table import TableColumns, read_table
from mwnet.data.table_sets import table_classes

X = np.array([[0.5, -1.0], [1.5, 2.0], [-0.25, 4.0], [3.0, 0.0], [2.0, -2.5], [1.0, 1.0]])
LABELS = ["dog", "cat", "dog", "eel", "cat", "dog"]
IDS = [f"r{i}" for i in range(6)]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def plain_csv(path: Path) -> Path:
    rows = [[i, y, *x] for i, y, x in zip(IDS, LABELS, X.tolist(), strict=True)]
    return write_csv(path, ["id", "label", "a", "b"], rows)


def test_every_format_reads_to_the_same_rows(tmp_path: Path) -> None:
    cols = TableColumns(id="id")
    from_csv = read_table(plain_csv(tmp_path / "t.csv"), cols)
    np.savez(tmp_path / "t.npz", X=X, y=np.array(LABELS), ids=np.array(IDS))
    from_npz = read_table(tmp_path / "t.npz")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.array([2, 0, 2, 1, 0, 2]))
    from_npy = read_table(tmp_path / "x.npy", labels_path=tmp_path / "y.npy")
    vectors = [[i, y, json.dumps(x)] for i, y, x in zip(IDS, LABELS, X.tolist(), strict=True)]
    spaced = [[i, y, " ".join(map(str, x))] for i, y, x in zip(IDS, LABELS, X, strict=True)]
    emb = TableColumns(id="id", embedding="emb")
    from_json = read_table(write_csv(tmp_path / "j.csv", ["id", "label", "emb"], vectors), emb)
    from_spaced = read_table(write_csv(tmp_path / "s.csv", ["id", "label", "emb"], spaced), emb)
    for table in (from_csv, from_npz, from_npy, from_json, from_spaced):
        assert table.features.dtype == np.float64
        np.testing.assert_array_equal(table.features, X)  # decimal text of doubles: exact
    for table in (from_csv, from_npz, from_json, from_spaced):
        assert table.labels == tuple(LABELS) and table.ids == tuple(IDS)
    assert from_csv.feature_names == ("a", "b")
    assert from_json.feature_names == ("emb[0]", "emb[1]")
    assert from_npy.labels == ("2", "0", "2", "1", "0", "2") and from_npy.ids[-1] == "5"
    # without an id column, rows are named by their number, and a text column is no feature
    assert read_table(tmp_path / "t.csv", TableColumns(features=("a",))).ids[-1] == "5"
    with pytest.raises(DatasetError, match=r"t.csv:2: column 'id' holds 'r0'.*data.table.id_col"):
        read_table(tmp_path / "t.csv")
    # without feature_columns, the id column would be a feature: named, it is not
    only_b = read_table(tmp_path / "t.csv", TableColumns(id="id", features=("b",)))
    np.testing.assert_array_equal(only_b.features[:, 0], X[:, 1])


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
def test_parquet_reads_like_csv_with_a_list_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": IDS, "label": LABELS, "emb": [list(x) for x in X.tolist()]})
    pq.write_table(table, tmp_path / "t.parquet")
    read = read_table(tmp_path / "t.parquet", TableColumns(id="id", embedding="emb"))
    np.testing.assert_array_equal(read.features, X)
    assert read.labels == tuple(LABELS) and read.ids == tuple(IDS)


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DatasetError, match=r"needs pyarrow: pip install 'mwnet\[parquet\]'"):
        read_table(tmp_path / "t.parquet")


def test_integer_labels_sort_as_numbers_and_names_as_text() -> None:
    # text order would put "10" before "2": a class numbering nobody expects
    assert table_classes(("10", "2", "1", "2")) == ["1", "2", "10"]
    assert table_classes(("b", "a", "10")) == ["10", "a", "b"]
    assert table_classes(("02", "1")) == ["02", "1"]  # "02" is no integer's spelling


ROWS = [["r0", "dog", "1", "2"], ["r1", "cat", "3", "4"]]
H = ["id", "label", "a", "b"]
C = TableColumns(id="id")
EMB = TableColumns(id="id", embedding="e")

BAD_TABLES = [
    (["id", "y", "a"], [["r0", "dog", "1"]], TableColumns(), r"no column 'label' "
     r"\(data.table.label_column\); its columns are id, y, a"),
    (H, [["r0", "dog", "1", "x"]], C, r"t.csv:2: column 'b' holds 'x', not a number"),
    (H, [*ROWS, ["r2", "eel", "nan", "1"]], C, r"t.csv:4: column 'a' is nan \(not finite\)"),
    (H, [*ROWS, ["r2", "eel", "1", "inf"]], C, r"t.csv:4: column 'b' is inf"),
    (H, [*ROWS, ["r2", "eel", "", "1"]], C, r"t.csv:4: column 'a' is empty \(a missing value\)"),
    (H, [*ROWS, ["r2", "eel", "1"]], C, r"t.csv:4: 3 cells for the 4 columns .*ragged"),
    (H, [*ROWS, ["r0", "eel", "1", "2"]], C, r"t.csv:4: id 'r0' repeats the id of .*t.csv:2"),
    (H, [], C, r"a header but no rows"),
    (H, [*ROWS, ["r2", "", "1", "2"]], C, r"t.csv:4: no label in column 'label'"),
    (["id", "label", "e"], [["r0", "dog", "[1, 2]"], ["r1", "cat", "[1, 2, 3]"]], EMB,
     r"t.csv:3: .* 3 numbers, but the first row's has 2 \(ragged"),
    (["id", "label", "e"], [["r0", "dog", "1 x"]], EMB, r"t.csv:2: column 'e', entry 1, is 'x'"),
    (["id", "label", "t", "a"], [["r0", "dog", "maybe", "1"]], TableColumns(id="id", trusted="t"),
     r"t.csv:2: column 't' holds 'maybe'; a trusted flag is 1/0"),
]  # fmt: skip


@pytest.mark.parametrize(("header", "rows", "columns", "message"), BAD_TABLES)
def test_each_bad_table_is_one_line_naming_row_column_and_fix(
    tmp_path: Path, header, rows, columns, message
) -> None:
    path = write_csv(tmp_path / "t.csv", header, rows)
    with pytest.raises(DatasetError, match=message) as err:
        read_table(path, columns)
    assert "\n" not in str(err.value)


def test_missing_files_and_arrays_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope.csv: does not exist"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"cannot read a .txt file as a table"):
        read_table(tmp_path / "t.txt")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        read_table(tmp_path / "e.csv")
    np.savez(tmp_path / "t.npz", X=X)
    with pytest.raises(DatasetError, match=r"no array of labels \(y or labels\)"):
        read_table(tmp_path / "t.npz")
    bad = X.copy()
    bad[3, 1] = np.nan
    np.savez(tmp_path / "n.npz", X=bad, y=np.zeros(6))
    with pytest.raises(DatasetError, match=r"row 3, feature 1 of array 'X' is nan"):
        read_table(tmp_path / "n.npz")
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(DatasetError, match=r"data.table.labels_path=LABELS.npy"):
        read_table(tmp_path / "x.npy")


# -- the sets of a run ------------------------------------------------------------------


def clusters_csv(path: Path, n: int = 60, trusted: int = 0, seed: int = 0) -> Path:
    """Three separated clusters in 4 features; the first ``trusted`` rows flagged."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = 4.0 * np.eye(3, 4)[y] + rng.normal(0, 0.5, (n, 4))
    names = np.array(["cat", "dog", "eel"])[y]
    rows = [[f"r{i}", names[i], int(i < trusted), *x[i].round(4)] for i in range(n)]
    return write_csv(path, ["id", "label", "trusted", "f0", "f1", "f2", "f3"], rows)


def table_config(path: Path, *extra: str):
    return load_config(
        None,
        [
            "data.dataset=table",
            f"data.table.path={path}",
            "data.table.id_column=id",
            "data.table.trusted_column=trusted",
            "method.name=ce",
            *extra,
        ],
    )


def test_a_run_gets_trusted_rows_as_meta_set_and_a_seeded_test_split(tmp_path: Path) -> None:
    path = clusters_csv(tmp_path / "t.csv", trusted=9)
    cfg = table_config(path, "method.name=mwnet")
    data = prepare(cfg.data, 0, meta_reader="mwnet")
    assert data.classes == ["cat", "dog", "eel"]
    assert len(data.meta_labels) == 9 and data.meta_labels.tolist() == [0, 1, 2] * 3
    assert len(data.test_labels) == round(0.2 * 51) and len(data.train_labels) == 51 - 10
    assert is_features(data.train_images) and data.train_images.shape[1:] == (4, 1, 1)
    assert data.feature_names == ("f0", "f1", "f2", "f3")
    assert data.realized_noise_rate is None  # a user's own labels
    trusted_ids = {f"r{i}" for i in range(9)}
    assert data.ids is not None and not trusted_ids & set(data.ids)
    # the test rows are the same for every method and differ with the seed
    again = prepare(table_config(path, "method.name=ce").data, 0)
    assert torch.equal(again.test_images, data.test_images) and again.ids == data.ids
    other = prepare(cfg.data, 1, meta_reader="mwnet")
    assert not torch.equal(other.test_images, data.test_images)
    # every row is in exactly one set
    rows = torch.cat([data.train_images, data.meta_images, data.test_images]).flatten(1)
    assert len({tuple(r.tolist()) for r in rows}) == 60


def test_trusted_and_test_tables_in_their_own_files(tmp_path: Path) -> None:
    train = clusters_csv(tmp_path / "train.csv", n=30)
    clean = clusters_csv(tmp_path / "clean.csv", n=6, seed=1)
    test = clusters_csv(tmp_path / "test.csv", n=12, seed=2)
    cfg = table_config(train, f"data.table.trusted_path={clean}", f"data.table.test_path={test}")
    data = prepare(cfg.data, 0, meta_reader="mwnet")
    assert len(data.train_labels) == 30 and len(data.meta_labels) == 6
    assert len(data.test_labels) == 12 and data.test_labels.tolist() == [0, 1, 2] * 4


def test_the_set_errors_name_the_key_and_the_fix(tmp_path: Path) -> None:
    path = clusters_csv(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match=r"data.table.trusted_column=COLUMN .* data.meta_source"):
        prepare(table_config(path, "data.table.trusted_column=null").data, 0, meta_reader="mwnet")
    tiny = clusters_csv(tmp_path / "tiny.csv", n=2)
    with pytest.raises(ConfigError, match=r"test_fraction=0.2 of the 2 untrusted rows"):
        prepare(table_config(tiny).data, 0)
    # a trusted class that no training row has
    rows = list(csv.reader(path.open()))
    rows[1][1], rows[1][2] = "fox", "1"  # r0: the only 'fox', trusted
    odd = write_csv(tmp_path / "odd.csv", rows[0], rows[1:])
    with pytest.raises(DatasetError, match=r"trusted rows hold class\(es\) 'fox', which no"):
        prepare(table_config(odd).data, 0)
    test = write_csv(tmp_path / "test.csv", rows[0], [rows[1]])
    with pytest.raises(DatasetError, match=r"class 'fox', which no training row has"):
        prepare(table_config(path, f"data.table.test_path={test}").data, 0)
    narrow = write_csv(tmp_path / "narrow.csv", ["id", "label", "f0"], [["a", "cat", "1"]])
    with pytest.raises(DatasetError, match=r"narrow.csv \(data.table.test_path\) has 1 features"):
        prepare(table_config(path, f"data.table.test_path={narrow}").data, 0)
    # too few rows for a carved meta set (synthetic noise) or a validation split
    carve = ("data.table.trusted_column=null", "data.noise=uniform", "data.noise_rate=0.2")
    few = table_config(path, *carve, "data.meta_per_class=20")
    with pytest.raises(ConfigError, match=r"class 'cat' has \d+ training samples, fewer than the"):
        prepare(few.data, 0, meta_reader="mwnet")
    with pytest.raises(ConfigError, match=r"data.val_size=48 holds out all 48 training samples"):
        prepare(table_config(path, "data.val_size=48").data, 0)
    with pytest.raises(ConfigError, match=r"data\.table\.path=FILE"):
        load_config(None, ["data.dataset=table"])
    with pytest.raises(ConfigError, match=r"data\.normalize=imagenet holds image constants"):
        table_config(path, "data.normalize=imagenet")


# -- what the batches make of the rows ---------------------------------------------------


def test_rows_are_standardised_by_training_statistics_in_their_own_units() -> None:
    x = torch.tensor(X, dtype=torch.float32)
    rows = torch.cat([x, torch.full((6, 1), 7.0)], 1).reshape(6, 3, 1, 1)  # a constant feature
    norm = Normalize.from_images(rows)
    ref = rows.double().reshape(6, 3)
    np.testing.assert_allclose(norm.mean[:2], ref[:, :2].mean(0).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(norm.std[:2], ref[:, :2].std(0).numpy(), rtol=0, atol=1e-12)
    assert norm.mean[2] == 7.0 and norm.std[2] == 1.0  # constant: centred, not divided by 0
    out = to_float(rows, norm).reshape(6, 3).double()
    expected = (ref - torch.tensor(norm.mean)) / torch.tensor(norm.std)
    # to_float computes x * (1/s) - m/s in float32: each of the two roundings of the
    # product and the difference, and of 1/s and m/s, is within u of its value, so the
    # result is within about 4u (|x/s| + |m/s|) of the exact one.
    u = 2.0**-24
    bound = 4 * u * ((ref.abs() + torch.tensor(norm.mean).abs()) / torch.tensor(norm.std)) + 1e-30
    assert ((out - expected).abs() <= bound).all()
    # the image rule (x / 255 units) would be a different input altogether
    wrong = (ref / 255 - torch.tensor(norm.mean)) / torch.tensor(norm.std)
    assert ((wrong - expected).abs() > 100 * bound).any()
    assert torch.equal(rows.reshape(6, 3)[:, 2], torch.full((6,), 7.0))  # stored rows unchanged
    # without normalisation the rows are used as they are, not scaled by 1/255
    assert torch.equal(to_float(rows, None), rows)


def test_table_batches_are_the_tensors_the_loop_shards(tmp_path: Path) -> None:
    """The training loop shards a global batch with ``DataParallel.shard`` (a
    ``tensor_split`` of whatever batch tensor it gets), after every rank built the same
    ``DeviceBatches`` from the same data: table rows go through that same object, and
    their preparation is a pure function of the config and seed, so every rank reads the
    same rows."""
    from mwnet.distributed import DataParallel

    path = clusters_csv(tmp_path / "t.csv", trusted=9)
    cfg = table_config(path, "method.name=mwnet")
    data = prepare(cfg.data, 0, meta_reader="mwnet")
    again = prepare(cfg.data, 0, meta_reader="mwnet")
    assert torch.equal(data.train_images, again.train_images) and data.ids == again.ids
    batches = DeviceBatches(data.train_images, data.train_labels, 8, "cpu", seed=0)
    assert type(batches) is DeviceBatches
    x, _ = next(iter(batches))
    ranks = []
    for rank in range(2):
        parallel = object.__new__(DataParallel)
        parallel.rank, parallel.world_size = rank, 2
        ranks.append(parallel.shard(x))
    assert torch.equal(torch.cat(ranks), x) and x.shape == (8, 4, 1, 1)
    with pytest.raises(Exception, match="table rows are not augmented"):
        from mwnet.data import Augment

        DeviceBatches(data.train_images, data.train_labels, 8, "cpu", augment=Augment())


def test_rows_to_predict_need_no_labels_and_their_features_by_name(tmp_path: Path) -> None:
    from mwnet.predict.inputs import open_table_inputs

    trained_on = {
        "feature_names": ["X[0]", "X[1]"],
        "label_column": "label",
        "feature_columns": None,
        "embedding_column": None,
        "id_column": None,
        "trusted_column": None,
    }
    np.savez(tmp_path / "new.npz", X=X, ids=np.array(IDS))  # no labels
    rows = open_table_inputs(str(tmp_path / "new.npz"), trained_on)
    assert rows.column == "id" and [item.name for item in rows.items] == IDS
    assert not rows.labelled
    assert torch.equal(rows.images, torch.tensor(X, dtype=torch.float32).view(6, 2, 1, 1))
    # a CSV whose embedding has another length than the model's
    emb = {**trained_on, "feature_names": ["e[0]", "e[1]"], "embedding_column": "e"}
    path = write_csv(tmp_path / "e.csv", ["e", "label"], [["1 2 3", "dog"]])
    with pytest.raises(DatasetError, match=r"not the 2 the model was trained on \(extra e\[2\]\)"):
        open_table_inputs(str(path), emb)
    path = write_csv(tmp_path / "ok.csv", ["label", "e"], [["dog", "1 2"], ["", "3 4"]])
    some = open_table_inputs(str(path), emb)  # an empty label cell: that row is unlabelled
    assert [item.label for item in some.items] == ["dog", None] and some.labelled
