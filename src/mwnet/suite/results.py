"""What the suite knows about one finished (or failed) cell, whichever place it reads it from.

A cell's outcome lives in two places: its run directory (checkpoints, CSVs, plots: large,
on the machine that trained it) and its ledger record (:mod:`mwnet.suite.ledger`: small,
committed, merged across machines). The selection and the report read neither directly:
they read a :class:`Result`, which both provide, so that a report from the ledger alone is
the report the run directories give.

Besides ``summary.json`` and the per-epoch metrics, the report needs a few numbers that
come from the larger per-sample files (the weights' AUROC, the learned weighting function,
the range of training losses, a histogram of the final weights): :func:`derive` computes
them from a run directory, and a record stores what it computed.
"""

from __future__ import annotations

import os
import platform
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.machine import cpu_model
from mwnet.run.records import read_json, read_jsonl, read_sample_weights, read_weight_function

WF = "weight_function.csv"
SW = "sample_weights.csv"
FAILED_SUFFIX = ".failed.json"
"""Beside a run directory whose run stopped on an error it would repeat on resume."""
HISTOGRAM_EDGES = 40
"""Edges of the clean-vs-corrupted histogram of the final weights (39 bins)."""


def failed_file(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + FAILED_SUFFIX)


def _short(value: float) -> float:
    """Six significant digits: what a plot or a trend needs, and a small record."""
    return float(f"{float(value):.6g}")


def _shorts(values: np.ndarray) -> list:
    return np.vectorize(_short, otypes=[float])(values).tolist() if values.size else []


def derive(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the report takes from a run's per-sample files, small enough to keep:
    ``weight_auroc`` (a low final weight as a detector of a corrupted label),
    ``issues_auroc`` (``mwnet issues``' score as that detector), ``weight_function``
    (``losses``, ``weights``: one curve, or one per class cluster), ``loss_percentiles``
    (the 1st and 99th percentile of the final training losses) and ``weight_histogram``
    (``edges``, ``clean``, ``corrupted`` counts). Keys whose files are absent are left out.
    """
    from mwnet.label_issues.metrics import auroc

    out: dict[str, Any] = {}
    noise_known = bool(summary.get("noise_known"))
    sw, wf = run_dir / SW, run_dir / WF
    if sw.is_file():
        table = read_sample_weights(sw)
        low, high = np.percentile(table["loss"], [1, 99])
        out["loss_percentiles"] = [_short(low), _short(high)]
        if noise_known and "corrupted" in table:
            weights, bad = table["weight"], table["corrupted"]
            value = auroc(-weights, bad)
            out["weight_auroc"] = None if value is None else float(value)
            edges = np.linspace(float(weights.min()), float(weights.max()) + 1e-12, HISTOGRAM_EDGES)
            out["weight_histogram"] = {
                "edges": edges.tolist(),
                "clean": np.histogram(weights[~bad], edges)[0].tolist(),
                "corrupted": np.histogram(weights[bad], edges)[0].tolist(),
            }
    if wf.is_file():
        losses, weights = read_weight_function(wf)
        out["weight_function"] = {"losses": _shorts(losses), "weights": _shorts(weights)}
    if noise_known:
        out["issues_auroc"] = _issues_auroc(run_dir)
    return out


def _issues_auroc(run_dir: Path) -> float | None:
    from mwnet.label_issues.report import find_label_issues

    try:
        evaluation = find_label_issues(run_dir).evaluation()
    except (OSError, ValueError):
        return None
    return None if evaluation is None else float(evaluation["auroc"])


@cache
def _hardware() -> tuple[str, str | None, int | None, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return cpu_model(), gpu, os.cpu_count(), f"{platform.system()} {platform.machine()}"


def this_machine(device: str | None = None) -> dict[str, Any]:
    """The machine this process runs on: CPU model, GPU (where CUDA is available), the
    threads torch uses, the cores, the OS, and the device a run on it used."""
    import torch

    cpu, gpu, cores, system = _hardware()
    return {
        "cpu": cpu,
        "gpu": gpu,
        "threads": torch.get_num_threads(),
        "cores": cores,
        "platform": system,
        "device": device,
    }


def these_versions() -> dict[str, str]:
    import torch

    from mwnet._version import __version__ as mwnet_version

    return {
        "mwnet": mwnet_version,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def device_name(machine: dict[str, Any]) -> str:
    """What a cell ran on, for the report: the GPU's name for a CUDA run, else the CPU's."""
    device = str(machine.get("device") or "cpu")
    if device.startswith("cuda"):
        return f"{machine.get('gpu') or 'unknown GPU'} (GPU)"
    return f"{machine.get('cpu') or 'unknown CPU'} (CPU)"


class Result:
    """One cell's outcome: ``finished`` (with its summary and metrics), ``failed`` (the
    error it stopped on), or neither (a run still in progress)."""

    def __init__(
        self,
        summary: dict[str, Any] | None,
        metrics: list[dict[str, Any]],
        finished: bool,
        failed: str | None = None,
        machine: dict[str, Any] | None = None,
        versions: dict[str, str] | None = None,
        derived: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        source: str = "run directory",
    ) -> None:
        self.summary = summary or {}
        self.metrics = metrics
        self.finished = finished
        self.failed = failed
        self._machine, self._versions, self._derived = machine, versions, derived
        self.run_dir = run_dir
        self.source = source

    @cached_property
    def derived(self) -> dict[str, Any]:
        if self._derived is None:
            self._derived = {} if self.run_dir is None else derive(self.run_dir, self.summary)
        return self._derived

    @cached_property
    def machine(self) -> dict[str, Any]:
        """A record's machine; a run directory's is taken to be this one (where it was
        trained, unless it was copied here)."""
        if self._machine is None:
            self._machine = this_machine(self.summary.get("device"))
        return self._machine

    @cached_property
    def versions(self) -> dict[str, str]:
        if self._versions is None:
            self._versions = these_versions()
        return self._versions

    @property
    def device(self) -> str:
        return device_name(self.machine)

    @property
    def val_acc(self) -> float | None:
        return self.summary.get("last_val_acc")

    @property
    def val_samples(self) -> int:
        """The validation split's size (0 where unknown)."""
        return int(self.summary.get("val_samples") or 0)


def read_run_dir(run_dir: Path) -> Result | None:
    """The run directory's result, or None where nothing of it is on disk."""
    from mwnet.train.loop import summary_finished

    failed = failed_file(run_dir)
    if failed.is_file():
        error = read_json(failed).get("error", "failed")
        return Result(None, [], False, failed=str(error), run_dir=run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    summary = read_json(summary_path)
    done = summary_finished(summary) and (run_dir / "accuracy.png").is_file()
    metrics_path = run_dir / "metrics.jsonl"
    metrics = read_jsonl(metrics_path) if done and metrics_path.is_file() else []
    return Result(summary, metrics, done, run_dir=run_dir)
