"""Run-directory records: JSON lines that survive kills, atomic JSON, per-sample CSVs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mwnet.run.records import (
    append_jsonl,
    read_json,
    read_jsonl,
    read_sample_weights,
    read_weight_function,
    truncate_jsonl,
    write_json,
    write_sample_weights,
    write_weight_function,
)


def only_file(path: Path) -> None:
    """No temporary files were left next to ``path``."""
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --- JSON lines ---------------------------------------------------------------------


def test_jsonl_round_trip_with_numpy_and_torch_scalars(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1, "test_acc": np.float32(0.5), "loss": torch.tensor(2.0)})
    append_jsonl(path, {"epoch": 2, "per_class": np.array([1, 2]), "note": "a\nb"})
    assert read_jsonl(path) == [
        {"epoch": 1, "test_acc": 0.5, "loss": 2.0},
        {"epoch": 2, "per_class": [1, 2], "note": "a\nb"},
    ]
    assert path.read_text().count("\n") == 2


def test_trailing_partial_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with path.open("a") as f:
        f.write('{"epoch": 2, "test_')
    assert read_jsonl(path) == [{"epoch": 1}]


def test_append_after_a_killed_write_drops_the_fragment(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with path.open("a") as f:
        f.write('{"epoch": 2, "test_')
    append_jsonl(path, {"epoch": 2})
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_append_after_fragment_only_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"ep' + "x" * 200_000)  # longer than one backward-scan chunk
    append_jsonl(path, {"epoch": 1})
    assert path.read_text() == '{"epoch": 1}\n'


def test_damaged_complete_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n\n{"epoch": 2,,}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: not a valid JSON line"):
        read_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_jsonl(path)


def test_truncate_keeps_matching_records_atomically(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for epoch in range(1, 6):
        append_jsonl(path, {"epoch": epoch})
    with path.open("a") as f:
        f.write('{"epo')
    dropped = truncate_jsonl(path, lambda r: r["epoch"] <= 3)
    assert dropped == 2
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    assert path.read_text().endswith("}\n")
    only_file(path)


def test_truncate_missing_file_is_a_no_op(tmp_path: Path) -> None:
    assert truncate_jsonl(tmp_path / "metrics.jsonl", lambda r: True) == 0
    assert not (tmp_path / "metrics.jsonl").exists()


# --- JSON documents -----------------------------------------------------------------


def test_json_round_trip_is_indented(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    summary = {"best_acc": np.float64(0.9), "last_acc": 0.88, "dir": tmp_path, "ok": True}
    write_json(path, summary)
    assert read_json(path) == {"best_acc": 0.9, "last_acc": 0.88, "dir": str(tmp_path), "ok": True}
    assert path.read_text() == json.dumps(read_json(path), indent=2) + "\n"
    only_file(path)


def test_failed_json_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_json(path, {"lr": 0.1})
    with pytest.raises(TypeError, match="cannot store a object in JSON"):
        write_json(path, {"lr": object()})
    assert read_json(path) == {"lr": 0.1}
    only_file(path)


# --- CSV tables ---------------------------------------------------------------------


def test_sample_weights_round_trip_from_tensors_and_arrays(tmp_path: Path) -> None:
    path = tmp_path / "sample_weights.csv"
    index = torch.tensor([7, 3, 9, 0])
    label = np.array([3, 1, 4, 1])
    true_label = torch.tensor([3, 2, 4, 0])
    corrupted = label != true_label.numpy()
    loss = torch.tensor([0.123456789, 2.5, 1e-8, 12345678.9], dtype=torch.float64)
    weight = np.array([0.9, 0.1, 1.0, 0.0], dtype=np.float32)
    write_sample_weights(
        path, index, label, loss, weight, true_label=true_label, corrupted=corrupted
    )

    lines = path.read_text().splitlines()
    assert lines[0] == "index,given_label,true_label,corrupted,loss,weight"
    assert lines[1] == "7,3,3,0,0.123457,0.9"
    assert lines[2] == "3,1,2,1,2.5,0.1"
    assert lines[4] == "0,1,0,1,1.23457e+07,0"

    table = read_sample_weights(path)
    assert list(table) == ["index", "given_label", "true_label", "corrupted", "loss", "weight"]
    assert table["index"].dtype == np.int64 and table["corrupted"].dtype == np.bool_
    np.testing.assert_array_equal(table["index"], [7, 3, 9, 0])
    np.testing.assert_array_equal(table["true_label"], [3, 2, 4, 0])
    np.testing.assert_array_equal(table["corrupted"], [False, True, False, True])
    # the CSV keeps 6 significant digits ("%g"): within half a unit of the 6th, 5e-6
    # relative, of the value (0.123456789 reads back as 0.123457)
    np.testing.assert_allclose(table["loss"], loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(table["weight"], weight, rtol=1e-5)
    only_file(path)


def test_sample_weights_without_truth_name_only_the_given_label(tmp_path: Path) -> None:
    """On real data nothing says which labels are wrong: no true_label/corrupted columns;
    file datasets get the image path, commas and all."""
    path = tmp_path / "sample_weights.csv"
    paths = ["a/1.png", "b, with comma/2.png"]
    write_sample_weights(path, [4, 5], [0, 1], [0.5, 1.5], [0.9, 0.2], paths=paths)
    assert path.read_text().splitlines()[0] == "index,path,given_label,loss,weight"
    table = read_sample_weights(path)
    assert "corrupted" not in table and table["path"] == paths
    np.testing.assert_array_equal(table["given_label"], [0, 1])


def test_sample_weights_of_the_earlier_layout_still_read(tmp_path: Path) -> None:
    path = tmp_path / "sample_weights.csv"
    path.write_text("index,label,true_label,corrupted,loss,weight\n0,3,3,0,0.5,0.9\n")
    table = read_sample_weights(path)
    assert table["given_label"].tolist() == [3] and table["corrupted"].tolist() == [False]


def test_sample_weights_accept_bfloat16_on_any_device(tmp_path: Path) -> None:
    path = tmp_path / "sample_weights.csv"
    ones = torch.ones(2, dtype=torch.long)
    half = torch.full((2,), 0.5, dtype=torch.bfloat16)
    write_sample_weights(path, ones, ones, half, half)
    assert read_sample_weights(path)["weight"].tolist() == [0.5, 0.5]


def test_empty_sample_weights_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sample_weights.csv"
    empty = np.array([], dtype=np.int64)
    write_sample_weights(path, empty, empty, empty, empty, true_label=empty, corrupted=empty)
    assert all(len(column) == 0 for column in read_sample_weights(path).values())


@pytest.mark.parametrize(
    ("columns", "truth", "message"),
    [
        (([0, 1], [0, 1], [0.1, 0.2], [0.1]), {}, "one length"),
        (([[0, 1]], [0], [0.1], [0.1]), {}, "index must be 1-d"),
        (([0], [0], [0.1], [0.1]), {"true_label": [0], "corrupted": [2]}, "only 0/1"),
        (([0], [0], [0.1], [0.1]), {"true_label": [0]}, "together"),
    ],
)
def test_sample_weights_reject_bad_columns(tmp_path: Path, columns, truth, message) -> None:
    with pytest.raises(ValueError, match=message):
        write_sample_weights(tmp_path / "s.csv", *columns, **truth)
    assert not (tmp_path / "s.csv").exists()


def test_weight_function_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "weight_function.csv"
    losses = torch.linspace(0, 5, 11)
    weights = torch.sigmoid(-losses)
    write_weight_function(path, losses, weights)
    assert path.read_text().splitlines()[:2] == ["loss,weight", "0,0.5"]
    read_losses, read_weights = read_weight_function(path)
    # 6 significant digits in the CSV: within 5e-6 relative (see above)
    np.testing.assert_allclose(read_losses, losses.numpy(), rtol=1e-5)
    np.testing.assert_allclose(read_weights, weights.numpy(), rtol=1e-5)


def test_csv_with_a_wrong_header_or_row_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "weight_function.csv"
    path.write_text("weight,loss\n1,2\n")
    with pytest.raises(ValueError, match="expected the header 'loss,weight'"):
        read_weight_function(path)
    path.write_text("loss,weight\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match="malformed row"):
        read_weight_function(path)


def test_files_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {})
    finally:
        os.umask(old)
    if os.name == "posix":
        assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644
