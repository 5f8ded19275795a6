"""`mwnet bench step|epoch` and the CLI wiring; times are never asserted, only shape and
baseline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mwnet.bench import mode_specs
from mwnet.bench.epoch import variant_overrides
from mwnet.bench.step import base_mode, bench_model, mode_spec
from mwnet.cli import main

TINY = ["bench", "step", "--model", "cnn_small", "--batch", "8", "--meta-batch", "8"]
TINY += ["--repeats", "2", "--warmup", "1", "--threads", "1"]
KEYS = {
    "mode",
    "model",
    "batch",
    "median_ms",
    "ratio_to_plain",
    "peak_mem_mb",
    "peak_mem_ratio",
    "device",
}


def test_bench_step_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == [
        "plain",
        "reverse",
        "fast",
        "fast+lowmem",
        "head",
        "partial",
    ]
    for row in rows:
        assert row.keys() >= KEYS
        assert row["model"] == "cnn_small" and row["batch"] == 8
        assert row["median_ms"] > 0 and row["ratio_to_plain"] > 0
    assert rows[0]["ratio_to_plain"] == 1.0
    if sys.platform.startswith("linux"):
        # each mode runs in a fresh process, whose step needs memory above the resident
        # model and data: a measurement of nothing reads 0 here
        plain = rows[0]["peak_mem_mb"]
        for row in rows:
            assert row["peak_mem_mb"] > 1, row["mode"]
            assert row["peak_mem_ratio"] == pytest.approx(row["peak_mem_mb"] / plain)
        assert rows[0]["peak_mem_ratio"] == 1.0


def test_bench_step_live_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--modes", "fast+lowmem", "--live-memory", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["plain", "fast+lowmem"]
    if sys.platform.startswith("linux"):
        assert all(r["memory_measure"] == "cpu-rss-live" for r in rows)
        assert all(r["peak_mem_mb"] > 1 for r in rows)


def test_bench_step_interval_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY, "--modes", "fast", "--meta-interval", "2", "--no-memory"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fast+interval(2)" in out and "reverse" not in out
    assert "torch" in out and "threads" in out


def test_mode_specs() -> None:
    names = [s.name for s in mode_specs(["fast", "reverse"], meta_interval=3)]
    assert names == ["plain", "reverse", "fast", "reverse+interval(3)", "fast+interval(3)"]
    with pytest.raises(ValueError, match="unknown mode"):
        mode_specs(["slow"])
    specs = mode_specs(["head", "fast+lowmem"], meta_interval=5)
    assert [s.name for s in specs] == [
        "plain",
        "fast+lowmem",
        "head",
        "fast+lowmem+interval(5)",
        "head+interval(5)",
    ]
    lowmem = specs[1]
    assert (lowmem.hypergrad, lowmem.low_memory, lowmem.meta_interval) == ("fast", True, 1)
    assert (specs[4].hypergrad, specs[4].low_memory, specs[4].meta_interval) == ("head", False, 5)


def test_partial_rows_at_several_cuts(capsys: pytest.CaptureFixture[str]) -> None:
    """``partial`` (the model's default top) and one ``partial@NAME`` row per cut, each
    with the top that begins at that module."""
    args = [*TINY, "--no-memory", "--json", "--modes", "partial", "--cuts", "features.1,head"]
    assert main([*args, "--meta-interval", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == [
        "plain",
        "partial",
        "partial@features.1",
        "partial@head",
        "partial+interval(2)",
        "partial@features.1+interval(2)",
        "partial@head+interval(2)",
    ]
    assert all(r["hypergrad"] == "partial" for r in rows[1:])
    specs = mode_specs(["partial"], cuts=["features.1"])
    assert (specs[1].cut, specs[2].cut) == (None, "features.1")
    with pytest.raises(ValueError, match="partial@MODULE"):
        mode_spec("fast@features.1")


def test_famus_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """``famus`` draws its layers, ``famus+top`` keeps the ones nearest the output; the
    memory subprocess (not run here) rebuilds each from its base mode name."""
    assert main([*TINY, "--no-memory", "--json", "--modes", "famus,famus+top"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["plain", "famus", "famus+top"]
    assert all(r["hypergrad"] == "famus" for r in rows[1:])
    specs = mode_specs(["famus+top", "famus"])
    assert [(s.name, s.famus) for s in specs[1:]] == [("famus", "uniform"), ("famus+top", "top")]
    assert [base_mode(s) for s in specs[1:]] == ["famus", "famus+top"]


def test_a_cut_that_is_not_a_module_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--no-memory", "--modes", "partial", "--cuts", "layer9"]) == 2
    assert "mwnet: error: 'layer9' is not a module of the model" in capsys.readouterr().err


def test_mode_specs_with_compile() -> None:
    specs = mode_specs(["fast", "head", "fast+lowmem"], compile=True)
    assert [s.name for s in specs] == [
        "plain",
        "fast",
        "fast+lowmem",
        "head",
        "plain+compile",
        "fast+compile",
        "fast+lowmem+compile",
    ]
    assert [s.compile for s in specs] == [False] * 4 + [True] * 3


def test_bench_step_compile(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "step", "--model", "mlp", "--batch", "8", "--meta-batch", "8"]
    args += ["--repeats", "1", "--warmup", "1", "--threads", "1", "--json"]
    assert main([*args, "--modes", "fast", "--compile"]) == 0
    rows = {r["mode"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["plain", "fast", "plain+compile", "fast+compile"]
    assert rows["plain+compile"]["ratio_to_plain"] == 1.0 and rows["fast+compile"]["compiled"]
    assert rows["fast+compile"]["peak_mem_mb"] is None  # not measured on CPU
    if sys.platform.startswith("linux"):
        assert rows["fast"]["peak_mem_mb"] is not None


def test_bench_models() -> None:
    assert bench_model("wrn-16-2") == ("wrn", {"depth": 16, "width": 2})
    assert bench_model("resnet32") == ("resnet32", {})
    assert bench_model("cnn_small") == ("cnn_small", {})


def test_bench_step_lowmem_on_a_narrow_wrn(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "step", "--model", "wrn-10-1", "--batch", "4", "--meta-batch", "4"]
    args += ["--repeats", "1", "--warmup", "0", "--threads", "1", "--no-memory", "--json"]
    assert main([*args, "--modes", "fast+lowmem,head", "--meta-interval", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == [
        "plain",
        "fast+lowmem",
        "head",
        "fast+lowmem+interval(2)",
        "head+interval(2)",
    ]
    assert all(r["model"] == "wrn-10-1" and r["peak_mem_mb"] is None for r in rows)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["bench", "step", "--help"], ["bench", "epoch", "--help"], ["bench", "--help"]],
)
def test_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_bad_mode_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "step", "--modes", "plain,slow"])
    assert info.value.code == 2


def test_python_dash_m_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mwnet", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "bench" in done.stdout


def _fake_data():
    """tests/train/fake_data.py, loaded by path (that directory is not a package)."""
    path = Path(__file__).parent / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("bench_fake_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EPOCH = ["bench", "epoch", "--subset", "60", "--repeats", "1", "--warmup-steps", "1"]
EPOCH += ["--threads", "1", "--device", "cpu"]
TINY_DATA = ["data.meta_per_class=2", "data.batch_size=20", "data.meta_batch_size=10"]


def test_bench_epoch_on_fake_fashion_mnist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _fake_data().write_idx(tmp_path / "fmnist", per_class=12, test_per_class=1)
    args = [*EPOCH, "--variants", "ce,fast,fast+lowmem,head", "--meta-interval", "2", "--json"]
    assert main([*args, f"data.root={root}", *TINY_DATA]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == [
        "ce",
        "fast",
        "fast+lowmem",
        "head",
        "fast+interval(2)",
        "head+interval(2)",
    ]
    for row in rows:
        assert row["train_samples"] == 60 and row["steps"] == 3
        assert row["epoch_s"] > 0 and len(row["epoch_s_all"]) == 1
        assert row["model"] == "cnn_small" and row["device"] == "cpu"
    assert rows[0]["ratio_to_ce"] == 1.0 and rows[0]["method"] == "ce"
    assert (rows[2]["hypergrad"], rows[2]["low_memory"]) == ("fast", True)
    assert (rows[5]["hypergrad"], rows[5]["meta_interval"]) == ("head", 2)


def test_bench_epoch_table_without_ce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _fake_data().write_idx(tmp_path / "fmnist", per_class=12, test_per_class=1)
    args = [*EPOCH, "--variants", "head", "--meta-interval", "1"]
    assert main([*args, f"data.root={root}", *TINY_DATA]) == 0
    out = capsys.readouterr().out
    assert "head" in out and "threads 1" in out and "x ce" in out


def test_bench_epoch_without_data_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mwnet.data.mnist as mnist

    nowhere = dataclasses.replace(mnist.FASHION_MNIST, system_dirs=())
    monkeypatch.setitem(mnist.IDX_SOURCES, "fashion-mnist", nowhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MWNET_DATA", raising=False)
    assert main([*EPOCH, f"data.root={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "never downloads" in err


def test_variant_overrides() -> None:
    chosen = variant_overrides(["head", "ce"], meta_interval=4)
    assert list(chosen) == ["ce", "head", "head+interval(4)"]
    assert chosen["head+interval(4)"][-1] == "method.mwnet.meta_interval=4"
    with pytest.raises(ValueError, match="unknown variant"):
        variant_overrides(["slow"], 1)


def test_bench_epoch_times_cmwnet_and_a_frozen_net(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _fake_data().write_idx(tmp_path / "fmnist", per_class=12, test_per_class=1)
    args = [*EPOCH, "--variants", "ce,cmwnet,frozen", "--meta-interval", "1", "--json"]
    assert main([*args, f"data.root={root}", *TINY_DATA]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["ce", "cmwnet", "frozen"]
    assert (rows["cmwnet"]["method"], rows["cmwnet"]["hypergrad"]) == ("cmwnet", "fast")
    assert (rows["frozen"]["method"], rows["frozen"]["hypergrad"]) == ("mwnet", None)


def test_suite_variants_are_the_suite_cells() -> None:
    """``--suite SETTING``: suite method names time the suite's own cells (seed 0), and the
    bench's variants run on the same base (model, data size, setting)."""
    from mwnet.suite.grid import FULL, cells

    chosen = variant_overrides(["ce", "head", "mwnet-fast-k5"], 5, "pair-40")
    (k5,) = [c for c in cells(FULL, ("pair-40",), ("mwnet-fast-k5",)) if c.seed == 0]
    assert chosen["mwnet-fast-k5"] == list(k5.overrides)
    assert chosen["head"][-2:] == ["method.name=mwnet", "method.mwnet.hypergrad=head"]
    assert "data.noise=pair" in chosen["head"] and "model.name=mlp" in chosen["ce"]
    assert list(chosen) == ["ce", "head", "head+interval(5)", "mwnet-fast-k5"]
    with pytest.raises(ValueError, match="suite method names need a suite setting"):
        variant_overrides(["mwnet-fast-k5"], 1)


def test_the_small_cnn_regime_times_its_own_cells() -> None:
    """``--suite cnn-flip2-40``: the regime's methods are its cells (the small CNN on 6,000
    images), famus and partial among them."""
    from mwnet.suite.grid import FULL, REGIME_METHODS, cells

    chosen = variant_overrides(list(REGIME_METHODS), 1, "cnn-flip2-40")
    assert list(chosen) == list(REGIME_METHODS)
    for method in REGIME_METHODS:
        (cell,) = [c for c in cells(FULL, ("cnn-flip2-40",), (method,)) if c.seed == 0]
        # "ce" is also a bench variant: its own override follows the cell's (the same)
        tail = ["method.name=ce"] if method == "ce" else []
        assert chosen[method] == [*cell.overrides, *tail]
    assert {"model.name=cnn_small", "data.subset=7000", "data.val_size=1000"} <= set(chosen["ce"])
    assert "method.mwnet.hypergrad=famus" in chosen["mwnet-famus"]


def test_under_a_suite_cell_the_bench_options_come_last() -> None:
    """A suite cell sets its own device, threads and data size: the bench's explicit
    choices must follow it to hold (before it, the cell's ``threads=1`` and
    ``data.subset=7000`` would win), and ``--subset N`` keeps N training images beside the
    cell's validation split."""
    from mwnet.bench.epoch import EpochBenchConfig, _base_overrides, _ordered

    cell = variant_overrides(["ce"], 1, "cnn-flip2-40")["ce"]
    config = EpochBenchConfig(suite_setting="cnn-flip2-40", subset=500, threads=2)
    merged = _ordered(config, _base_overrides(config), cell)
    assert merged[: len(cell)] == cell
    assert merged[-1] == "data.subset=1500" and "threads=2" in merged[len(cell) :]
    # "auto" leaves the cell's device; no subset given: the cell's own 7,000
    auto = EpochBenchConfig(suite_setting="cnn-flip2-40")
    assert _ordered(auto, _base_overrides(auto), cell)[len(cell) :] == ["data.download=false"]
    # on a preset the variant's overrides still come last
    preset = EpochBenchConfig()
    assert _ordered(preset, _base_overrides(preset), ["x=1"])[-1] == "x=1"
    assert "data.subset=5000" in _base_overrides(preset)


def test_bench_epoch_on_a_regime_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on fake data: the regime's cells, shrunk by the bench's own options."""
    root = _fake_data().write_idx(tmp_path / "fmnist", per_class=12, test_per_class=1)
    args = ["bench", "epoch", "--suite", "cnn-pair-40", "--subset", "60", "--repeats", "2"]
    args += ["--warmup-steps", "1", "--threads", "1", "--meta-interval", "1", "--json"]
    args += ["--variants", "ce,mwnet-famus,mwnet-partial-k5"]
    tiny = ["data.val_size=10", *TINY_DATA]
    assert main([*args, f"data.root={root}", *tiny]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["ce", "mwnet-famus", "mwnet-partial-k5"]
    for row in rows.values():
        assert (row["train_samples"], row["steps"], row["model"]) == (60, 3, "cnn_small")
        assert row["preset"] == "suite:cnn-pair-40" and len(row["epoch_s_all"]) == 2
    assert rows["ce"]["ratio_total"] == 1.0
    assert (rows["mwnet-famus"]["hypergrad"], rows["mwnet-famus"]["meta_interval"]) == ("famus", 1)
    k5 = rows["mwnet-partial-k5"]
    assert (k5["hypergrad"], k5["meta_interval"]) == ("partial", 5)


def test_a_suite_setting_without_ce_times_its_own_methods() -> None:
    """The clean-set-size axis runs no CE: its methods are timed on their own cells, and
    asking for a variant that needs the CE cell says which methods the setting runs."""
    chosen = variant_overrides(["mwnet-fast"], 1, "flip2-40-clean100")
    assert list(chosen) == ["mwnet-fast"]
    assert "method.name=mwnet" in chosen["mwnet-fast"]
    with pytest.raises(ValueError, match=r"has no 'ce' cell to time; it runs .*mwnet-fast"):
        variant_overrides(["ce"], 1, "flip2-40-clean100")
