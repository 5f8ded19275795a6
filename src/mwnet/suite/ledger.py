"""The results ledger: one small, committed JSON record per finished suite cell.

Run directories hold checkpoints and per-sample files and stay on the machine that trained
them; evidence gathered over several sittings and machines would be lost with them. So
every cell the suite finishes (or that stops on a non-finite loss) also leaves a record,
``LEDGER/<setting>/<run name>.json``, holding:

- ``cell``: setting, method, seed, hyperparameter tag and run name;
- ``config``: the resolved config it trained with (the suite's output directory written
  as ``$OUT``, so a record does not depend on where the runs were kept);
- ``status`` (``finished`` or ``failed``) and ``error``;
- ``summary`` (``summary.json``), ``metrics`` (``metrics.jsonl``, one epoch a line) and
  ``derived`` (the few numbers the report takes from the per-sample files:
  :func:`mwnet.suite.results.derive`);
- ``machine`` (CPU model, GPU name where CUDA is available, torch threads, cores, OS and
  the run's device), ``versions`` (mwnet, torch, numpy, Python) and ``time`` (wall and CPU
  seconds of the process that trained it; null for a record of a run finished earlier).

No checkpoint, no CSV. The JSON is written deterministically (sorted keys, Python's
shortest round-trip floats, one epoch or one flat mapping per line), so a record diffs well
and the same outcome gives the same bytes.

A record *matches* a cell when its config equals the cell's, compared as a resume compares
them (:func:`mwnet.train.resume_check.config_changes`: the run's name and directory are
not compared), and additionally ignoring where and on what the cell ran
(:data:`NOT_COMPARED`). The suite skips a cell whose record matches. A record that does not
match is *stale*: it is listed (on the terminal and in the report), never used, and the
cell runs again, replacing it. Records from another machine join the ledger by copying
their files in; the report says which machine produced each setting's cells.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwnet.suite.grid import Cell
from mwnet.suite.results import Result, these_versions, this_machine

FORMAT = 1
OUT_MARK = "$OUT"
"""Stands for the suite's output directory in a record's config."""
NOT_COMPARED = ("device", "threads", "data.root", "data.download")
"""Where and on what a cell ran, not what it ran: a GPU run's record matches a CPU cell (the
report marks its device)."""
DEFAULT_LEDGER = Path("results") / "ledger"
"""Where the full-scale suite keeps its records (committed); the quick scale keeps its own
under its output directory."""


def default_ledger(out: Path, quick: bool) -> Path:
    return out / "ledger" if quick else DEFAULT_LEDGER


def record_path(root: Path, cell: Cell) -> Path:
    return root / cell.setting.name / f"{cell.run_name}.json"


def portable_config(config: Any, out: Path) -> Any:
    """The config with every path under the suite's output directory written from ``$OUT``
    (a continuation's ``data.exclude``/``model.init_from`` name another cell's run)."""
    prefix = str(out)
    if isinstance(config, dict):
        return {k: portable_config(v, out) for k, v in config.items()}
    if isinstance(config, list):
        return [portable_config(v, out) for v in config]
    if isinstance(config, str) and (config == prefix or config.startswith(prefix + "/")):
        return OUT_MARK + config[len(prefix) :]
    return config


def cell_config(cell: Cell, out: Path) -> dict[str, Any]:
    """The cell's resolved config as a record keeps it."""
    from mwnet.train.config import load_config
    from mwnet.train.resume_check import config_snapshot

    cfg = load_config(
        None, [*cell.overrides, f"out_dir={out / cell.setting.name}", f"name={cell.run_name}"]
    )
    return portable_config(config_snapshot(cfg), out)


def config_changes(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """What makes a record stale: ``{key: (recorded, current)}``, empty when it matches
    (a record of the flat method layout is read in the grouped one)."""
    from mwnet.train.config import upgrade_config
    from mwnet.train.resume_check import config_changes as changes

    upgraded = upgrade_config(recorded)
    return {k: v for k, v in changes(upgraded, current).items() if k not in NOT_COMPARED}


def make_record(
    cell: Cell,
    config: dict[str, Any],
    result: Result,
    wall_seconds: float | None = None,
    cpu_seconds: float | None = None,
) -> dict[str, Any]:
    """The record of a cell whose run directory holds ``result`` (finished or failed)."""
    return {
        "format": FORMAT,
        "cell": {
            "setting": cell.setting.name,
            "method": cell.method.name,
            "seed": cell.seed,
            "tag": cell.tag,
            "run_name": cell.run_name,
        },
        "config": config,
        "status": "finished" if result.finished else "failed",
        "error": result.failed,
        "summary": result.summary,
        "metrics": result.metrics,
        "derived": result.derived if result.finished else {},
        "machine": this_machine(result.summary.get("device") or config.get("device")),
        "versions": these_versions(),
        "time": {
            "wall_seconds": None if wall_seconds is None else round(wall_seconds, 2),
            "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 2),
        },
    }


def record_result(record: dict[str, Any]) -> Result:
    return Result(
        record.get("summary"),
        record.get("metrics") or [],
        record.get("status") == "finished",
        failed=record.get("error") if record.get("status") == "failed" else None,
        machine=record.get("machine") or {},
        versions=record.get("versions") or {},
        derived=record.get("derived") or {},
        source="ledger",
    )


# --- deterministic JSON -----------------------------------------------------------------


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _flat(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_scalar(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_scalar(v) for v in value)
    return True


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}: {_inline(value[k])}" for k in sorted(value))
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return json.dumps(value)  # floats: the shortest text that reads back the same


def _block(value: Any, depth: int) -> str:
    if _flat(value) or not value:
        return _inline(value)
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict):
        items = [
            f"{inner}{json.dumps(str(k))}: {_block(value[k], depth + 1)}" for k in sorted(value)
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [inner + _block(v, depth + 1) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def dumps(record: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, shortest round-trip floats, a flat mapping or list
    on one line (an epoch's metrics, a curve), everything else one item a line."""
    return _block(record, 0) + "\n"


# --- the ledger -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stale:
    """A record whose config no longer matches its cell."""

    path: Path
    changes: dict[str, tuple]

    def describe(self) -> str:
        key, (old, new) = next(iter(self.changes.items()))
        more = len(self.changes) - 1
        return f"{self.path}: {key} {old!r} in the record, {new!r} now" + (
            f", and {more} more" if more else ""
        )


class Ledger:
    """A directory of records, read with a cache that notices rewritten files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._changes: dict[tuple[Path, str], tuple[dict[str, Any], dict[str, tuple]]] = {}
        """Each record's differences from a config, kept while the record is unchanged
        (reading a record in the current layout resolves a whole config)."""

    def path(self, cell: Cell) -> Path:
        return record_path(self.root, cell)

    def read(self, cell: Cell) -> dict[str, Any] | None:
        path = self.path(cell)
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        hit = self._cache.get(path)
        if hit is None or hit[0] != key:
            hit = (key, json.loads(path.read_text(encoding="utf-8")))
            self._cache[path] = hit
        return hit[1]

    def write(self, cell: Cell, record: dict[str, Any]) -> Path:
        from mwnet.run.atomic import atomic_write

        path = self.path(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(dumps(record))
        return path

    def lookup(
        self, cell: Cell, config: Callable[[], dict[str, Any]]
    ) -> tuple[Result | None, Stale | None]:
        """The cell's result when its record matches ``config()`` (called only when a record
        exists: resolving a config is the slow part of reading a ledger); the staleness
        otherwise (both None: no record)."""
        record = self.read(cell)
        if record is None:
            return None, None
        current = config()
        key = (self.path(cell), json.dumps(current, sort_keys=True))
        if self._changes.get(key, (None,))[0] is not record:  # the record read anew
            self._changes[key] = (record, config_changes(record.get("config") or {}, current))
        changes = self._changes[key][1]
        if changes:
            return None, Stale(self.path(cell), changes)
        return record_result(record), None
