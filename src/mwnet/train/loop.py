"""The training loop: epochs, evaluation, metrics, atomic checkpoints and exact resume.

Read top to bottom: :func:`run` builds the experiment (or restores it from the run
directory's checkpoint), trains epoch by epoch, and after every epoch appends one line to
``metrics.jsonl`` and atomically replaces ``checkpoint.pt``, so a crash or Ctrl-C loses
at most the epoch in progress. On CPU a resumed run ends with the same metrics as an
uninterrupted one: the checkpoint holds the model, method, optimizers, schedule, global RNG
and the batch iterators' generators.

Data-parallel (a :class:`~mwnet.distributed.DataParallel` given): every rank runs this
same loop on the same global batches, trains on its shard of each and holds the same model;
per-sample losses and weights are gathered so every rank keeps the same records. Rank 0
alone writes the run directory and prints; every rank evaluates (identical models), so
no rank ever reads a file another is writing. The checkpoint has no per-rank state: a run
resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mwnet._version import __version__ as MWNET_VERSION
from mwnet.config import load_config_file, to_yaml
from mwnet.core.checks import NonFiniteError
from mwnet.data import pseudo_meta_precision, select_pseudo_meta
from mwnet.distributed import DataParallel, FaultHook
from mwnet.label_issues.weight_check import ADVICE, check_weights, curve_trend
from mwnet.run import (
    CheckpointError,
    append_jsonl,
    interrupt_deferred,
    load_checkpoint,
    plot_run,
    read_json,
    read_jsonl,
    save_checkpoint,
    truncate_jsonl,
    write_json,
    write_sample_weights,
    write_weight_function,
)
from mwnet.run.atomic import atomic_write
from mwnet.run.checkpoint import CHECKPOINT_NAME
from mwnet.run.claim import RunClaim, RunDirBusy, RunDirError, claim_fresh, claim_run_dir
from mwnet.run.model_file import MODEL_FILE, save_model_file
from mwnet.run.records import PATHS_FILE, paths_fingerprint, write_paths
from mwnet.run.saved_config import CONFIG_FILE, run_config
from mwnet.run.signals import SIGNALS_FILE, EpochPredictions, SampleSignals
from mwnet.run.weight_net_file import WEIGHT_NET_FILE, save_weight_net
from mwnet.train import resume_check
from mwnet.train.evaluate import accuracy, per_sample, predict
from mwnet.train.experiment import Experiment, build_experiment, build_schedule
from mwnet.train.pseudo_meta_set import score_training_set
from mwnet.train.shipped_model import model_fields

CHECKPOINT = CHECKPOINT_NAME
CONFIG = CONFIG_FILE
METRICS = "metrics.jsonl"
_STARTED_FILES = (CONFIG, PATHS_FILE, METRICS)
"""What a new run's directory may hold when it stops before its first checkpoint (a
metrics line is appended just before the checkpoint): removed with the directory."""


@dataclass
class EpochStats:
    """Running sums over one epoch's training steps."""

    loss_sum: float = 0.0
    steps: int = 0
    meta_loss_sum: float = 0.0
    meta_steps: int = 0
    weight_clean: float = 0.0
    n_clean: int = 0
    weighted_steps: int = 0
    zero_weight_steps: int = 0
    """Steps whose every weight was 0: the weighted loss was 0, nothing learned from the data."""
    largest_share: float | None = None
    """The most of one step's total weight any one sample carried (max_i w_i / Σ_i w_i over
    the global batch), over the epoch's steps with some weight: 1/n when every sample weighs
    the same, 1 when one sample makes the whole step, as it does in the collapse that
    ``zero_weight_steps`` ends in."""
    weight_corrupted: float = 0.0
    n_corrupted: int = 0
    loss_min: float = float("inf")
    loss_max: float = float("-inf")


def largest_share(weights: torch.Tensor) -> float | None:
    """max_i w_i / Σ_i w_i of one step's weights; None when they sum to 0 (no step taken)."""
    total = float(weights.sum())
    return float(weights.max()) / total if total > 0 else None


def _larger(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _autocast(exp: Experiment):
    if exp.cfg.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if exp.cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type=exp.device.type, dtype=dtype)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed per (run seed, epoch, rank): ranks draw different dropout masks, and a resumed
    run draws the ones it would have drawn, whatever RNG state rank 0 saved."""
    return zlib.crc32(f"{seed}/{epoch}/{rank}".encode())


class Trainer:
    """One run directory: trains, checkpoints, resumes."""

    def __init__(
        self,
        exp: Experiment,
        run_dir: Path,
        quiet: bool = False,
        parallel: DataParallel | None = None,
    ) -> None:
        self.exp = exp
        self.run_dir = run_dir
        self.parallel = parallel
        self.main = parallel is None or parallel.is_main
        self.quiet = quiet or not self.main
        self.fault = FaultHook.from_env() if parallel is not None else None
        self.claim: RunClaim | None = None
        """The run directory's lock (rank 0 only), taken by :func:`start` / :func:`resume`."""
        self.epoch = 0
        self.wall_time = 0.0
        self.loss_range = [float("inf"), float("-inf")]
        self.best = {"epoch": None, "test_acc": float("-inf")}
        self.best_val: dict[str, Any] = {"epoch": None, "val_acc": float("-inf"), "test_acc": None}
        """The epoch with the highest validation accuracy (the first of equals), and its
        test accuracy: what early stopping on the validation split would give."""
        self.last_test_acc: float | None = None
        self.signals = SampleSignals(exp.data.train_labels, exp.data.num_classes)
        self.label: str | None = None
        """Prefixes the epoch lines, e.g. the method's name when several runs share a
        terminal."""

    # -- checkpointing -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        e = self.exp
        return {
            "epoch": self.epoch,
            "wall_time": self.wall_time,
            "loss_range": list(self.loss_range),
            "best": dict(self.best),
            "best_val": dict(self.best_val),
            "model": e.model.state_dict(),
            "optimizer": e.optimizer.state_dict(),
            "schedule": e.schedule.state_dict(),
            "method": e.method.state_dict(),
            "warmup": None if e.warmup is None else e.warmup.state_dict(),
            "teacher": None if e.teacher is None else e.teacher.state_dict(),
            "train_batches": e.train_batches.state_dict(),
            "meta_batches": e.meta_batches.state_dict(),
            "meta_epochs": e.meta_epochs.state_dict(),
            "rng": _rng_state(e.device),
            "signals": self.signals.state_dict(),
            "config": resume_check.config_snapshot(e.cfg),
            "data_crc": self.data_crc,
            "mwnet_version": MWNET_VERSION,
        }

    @property
    def data_crc(self) -> int:
        """Fingerprint of the run's data (split, noise and all), computed once."""
        if getattr(self, "_data_crc", None) is None:
            d = self.exp.data
            parts = (d.train_images, d.train_labels, d.true_labels, d.meta_images, d.meta_labels)
            held = () if d.val_labels is None else (d.val_images, d.val_labels)
            self._data_crc = resume_check.data_fingerprint(
                *parts, d.test_images, d.test_labels, *held
            )
        return self._data_crc

    def load_state_dict(self, state: dict[str, Any]) -> None:
        e = self.exp
        self.epoch = int(state["epoch"])
        self.wall_time = float(state["wall_time"])
        self.loss_range = [float(v) for v in state["loss_range"]]
        self.best = dict(state["best"])
        self.best_val = dict(state.get("best_val") or self.best_val)
        e.model.load_state_dict(state["model"])
        e.optimizer.load_state_dict(state["optimizer"])
        e.schedule.load_state_dict(state["schedule"])
        e.method.load_state_dict(state["method"])
        if e.warmup is not None:
            e.warmup.load_state_dict(state["warmup"])
        if e.teacher is not None:
            e.teacher.load_state_dict(state["teacher"])
        e.train_batches.load_state_dict(state["train_batches"])
        e.meta_batches.load_state_dict(state["meta_batches"])
        e.meta_epochs.load_state_dict(state["meta_epochs"])
        _set_rng_state(state["rng"], e.device)
        self.signals.load_state_dict(state["signals"])

    def _save(self, record: dict[str, Any]) -> None:
        """Metrics line, checkpoint, summary: written together, Ctrl-C deferred; rank 0 only."""
        if not self.main:
            return
        saved = False
        try:
            with interrupt_deferred():
                append_jsonl(self.run_dir / METRICS, record)
                save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())
                saved = True
                self.signals.save(self.run_dir / SIGNALS_FILE, self._sample_columns())
                write_json(self.run_dir / "summary.json", self.summary(record))
        except OSError as err:  # a full disk, ulimit -f, a directory gone read-only or removed
            if saved:
                kept = f"epoch {self.epoch}'s checkpoint is saved"
            elif self.epoch > 1:
                kept = f"epoch {self.epoch - 1}'s checkpoint is intact"
            else:
                kept = "nothing was saved"
            resumable = saved or self.epoch > 1
            fix = f"mwnet train --resume {self.run_dir}" if resumable else "start it again"
            raise RunDirError(
                f"cannot save epoch {self.epoch} in {self.run_dir} ({_failed_write(err)}); "
                f"{kept}: fix that (free space, raise ulimit -f, ...), then {fix}"
            ) from err

    def _sample_columns(self) -> dict[str, Any]:
        """What the signals file keeps beside the signals: each sample's index in the
        dataset's training split, the truth when the noise is synthetic, and which run and
        epoch it is a record of (checked by ``mwnet issues`` against the run directory)."""
        d = self.exp.data
        columns = {"index": d.train_index, "classes": np.array(d.classes)}
        if d.ids is not None:  # a table's rows, named in the report by their ids
            columns["ids"] = np.array(d.ids, dtype=str)
        if d.noise_known:
            columns |= {"true_label": d.true_labels, "corrupted": d.corrupted}
        if getattr(self, "_config_crc", None) is None:
            self._config_crc = resume_check.config_fingerprint(self.exp.cfg)
        columns |= {
            "run_epoch": self.epoch,
            "run_seed": int(self.exp.cfg.seed),
            "run_config_crc": self._config_crc,
            "run_data_crc": self.data_crc,
        }
        if d.paths is not None:
            columns["paths_crc"] = paths_fingerprint(d.paths)
        return columns

    # -- one epoch -----------------------------------------------------------------
    def _train_epoch(self) -> EpochStats:
        e, stats, parallel = self.exp, EpochStats(), self.parallel
        if parallel is not None:
            torch.manual_seed(_rank_seed(int(e.cfg.seed), self.epoch, parallel.rank))
        method = e.method_at(self.epoch)
        method.begin_epoch(self.epoch)
        if method.restarts_at(self.epoch):
            self._restart_schedule()
        teacher = e.teacher
        freeze = None if teacher is None else e.cfg.method.teacher.freeze_epoch
        if teacher is not None and freeze is not None and self.epoch >= int(freeze):
            teacher.freeze()  # for good: saved with it, so a resumed run stays frozen
        from_meta = method.source(self.epoch) == "meta"
        indexed = method is e.method and e.descriptor.reads_index and not from_meta
        batches = e.meta_epochs if from_meta else e.train_batches
        corrupted = e.data.corrupted.to(e.device)
        bar = tqdm(
            batches,
            total=len(batches),
            desc=f"epoch {self.epoch + 1}/{e.total_epochs}",
            leave=False,
            disable=self.quiet,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        e.model.train()
        for x, y, idx in bar:
            if parallel is None:
                with _autocast(e):
                    out = method.step(x, y, index=idx) if indexed else method.step(x, y)
                losses, weights = out.losses, out.weights
            else:
                if self.fault is not None:
                    self.fault.at(parallel.rank, method.steps_done)
                with _autocast(e):
                    xs, ys = parallel.shard(x), parallel.shard(y)
                    if indexed:
                        out = method.step(xs, ys, index=parallel.shard(idx))
                    else:
                        out = method.step(xs, ys)
                losses, weights = self._gather(out.losses, out.weights, len(y))
            if teacher is not None:
                teacher.update(e.model)
            stats.loss_sum += float(out.loss)
            stats.steps += 1
            stats.loss_min = min(stats.loss_min, float(losses.min()))
            stats.loss_max = max(stats.loss_max, float(losses.max()))
            if out.meta_loss is not None:
                stats.meta_loss_sum += float(out.meta_loss)
                stats.meta_steps += 1
            if not from_meta:
                self.signals.record_step(idx, losses, weights)
                if weights is not None:
                    w, bad = weights.float(), corrupted[idx]
                    stats.weighted_steps += 1
                    stats.zero_weight_steps += int(not bool((w != 0).any()))
                    stats.largest_share = _larger(stats.largest_share, largest_share(w))
                    stats.weight_corrupted += float(w[bad].sum())
                    stats.n_corrupted += int(bad.sum())
                    stats.weight_clean += float(w[~bad].sum())
                    stats.n_clean += int((~bad).sum())
            postfix = {"train loss": f"{stats.loss_sum / stats.steps:.3f}"}
            if self.last_test_acc is not None:
                postfix["last test acc"] = f"{self.last_test_acc:.2f}%"
            if not self.quiet:
                postfix["run ETA"] = self._eta(bar.format_dict["elapsed"], stats.steps, len(bar))
            bar.set_postfix(postfix, refresh=False)
        return stats

    def _restart_schedule(self) -> None:
        """The method starts training afresh (:meth:`Method.restarts_at`): the configured
        learning-rate schedule runs again from its first epoch, and only the epochs from
        here on are candidates for the best epoch."""
        e = self.exp
        for group in e.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        e.schedule = build_schedule(e.cfg, e.optimizer)
        self.best = {"epoch": None, "test_acc": float("-inf")}
        self.best_val = {"epoch": None, "val_acc": float("-inf"), "test_acc": None}

    def _eta(self, elapsed: float, steps: int, steps_per_epoch: int) -> str:
        """Time left in the whole run: this epoch's pace for the rest of it, then the mean
        finished epoch (evaluation included) for each epoch still to come."""
        this_epoch = elapsed / max(steps, 1) * steps_per_epoch
        per_epoch = self.wall_time / self.epoch if self.epoch else this_epoch
        left = this_epoch - elapsed + per_epoch * (self.exp.total_epochs - self.epoch - 1)
        return _duration(max(left, 0.0))

    def _pick_pseudo_meta(self) -> dict[str, Any]:
        """With no clean set: this epoch's pseudo-meta set, the lowest-loss samples of each
        observed class under the scorer; its size and label precision for the record."""
        e, d = self.exp, self.exp.cfg.data
        stream = e.pseudo_meta
        if stream is None or self.epoch < int(e.cfg.method.warmup_epochs):
            return {}
        scorer = e.teacher.module if d.pseudo_meta_scorer == "teacher" else e.model
        data = e.data
        scores = score_training_set(
            scorer,
            data.train_images,
            data.train_labels,
            e.normalize,
            e.device,
            int(d.eval_batch_size),
            self.parallel,
        )
        picked = select_pseudo_meta(
            scores, data.train_labels, int(d.pseudo_meta_per_class), data.num_classes
        )
        chosen = picked.indices
        stream.replace(data.train_images[chosen], data.train_labels[chosen], self.epoch)
        known = d.noise != "none"  # with clean labels every pick is right by construction
        precision = pseudo_meta_precision(chosen, data.train_labels, data.true_labels)
        short = [*picked.short_classes, *picked.empty_classes]
        return {
            "meta_size": len(chosen),
            "meta_precision": precision if known else None,
            "meta_short_classes": short,
        }

    def _check_weights(self, stats: EpochStats) -> dict[str, Any]:
        """A weighting epoch's check of its weights against the run's own label score, and
        the direction of its learned curve (:mod:`mwnet.label_issues.weight_check`)."""
        if not stats.weighted_steps:
            return {}
        check = check_weights(self.signals, self.signals.last_weight.numpy())
        out: dict[str, Any] = {
            "weight_score_corr": check.correlation,
            "weights_favour_suspects": check.favours_suspects if check.judged else None,
        }
        low, high = stats.loss_min, stats.loss_max
        if low < high:
            grid = torch.linspace(low, high, 64)
            with torch.no_grad():
                curve = self.exp.method.weighting_function(grid.to(self.exp.device))
            if curve is not None:
                out["curve_trend"] = curve_trend(grid.numpy(), curve.float().cpu().numpy())
        return out

    def _gather(
        self, losses: torch.Tensor, weights: torch.Tensor | None, total: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The global batch's per-sample losses and weights from every rank's shard."""
        assert self.parallel is not None
        columns = [losses.detach()]
        if weights is not None:
            columns.append(weights.detach().to(losses.dtype))
        both = self.parallel.gather(torch.stack(columns, 1), total)
        return both[:, 0], (both[:, 1] if weights is not None else None)

    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float | None]:
        """Test accuracy (and on the training set, clean vs corrupted) of the model, or of
        ``model`` (e.g. the EMA teacher)."""
        return self._evaluate(model)[0]

    def _evaluate(
        self, model: torch.nn.Module | None = None
    ) -> tuple[dict[str, float | None], EpochPredictions | None]:
        """:meth:`evaluate`'s scores, and (with ``eval_train``) the model's predictions for
        every training sample, from the same pass."""
        e, d = self.exp, self.exp.data
        model = e.model if model is None else model
        bs = int(e.cfg.data.eval_batch_size)
        pred, _ = predict(
            model, d.test_images, d.test_labels, e.normalize, e.device, bs, self.parallel
        )
        out = {"test_acc": accuracy(pred, d.test_labels)}
        if d.val_labels is not None:  # sharded like the test pass
            pred, _ = predict(
                model, d.val_images, d.val_labels, e.normalize, e.device, bs, self.parallel
            )
            out["val_acc"] = accuracy(pred, d.val_labels)
        if not e.cfg.eval_train:
            return out, None
        table = per_sample(
            model,
            d.train_images,
            d.train_labels,
            e.normalize,
            e.device,
            bs,
            reduce=lambda logits, y: EpochPredictions.from_logits(logits, y).stacked(),
            parallel=self.parallel,
        )
        seen = EpochPredictions.unstacked(table)
        out["train_acc"] = accuracy(seen.pred, d.train_labels)
        if d.noise_known:
            out["train_acc_clean"] = accuracy(seen.pred, d.true_labels, ~d.corrupted)
            out["train_acc_corrupted"] = accuracy(seen.pred, d.true_labels, d.corrupted)
            out["memorized_corrupted"] = accuracy(seen.pred, d.train_labels, d.corrupted)
        return out, seen

    def _record(self, stats: EpochStats, scores: dict, seconds: float) -> dict[str, Any]:
        def mean(total: float, count: int) -> float | None:
            return total / count if count else None

        return {
            "epoch": self.epoch + 1,
            "lr": self.exp.optimizer.param_groups[0]["lr"],
            "train_loss": mean(stats.loss_sum, stats.steps),
            "meta_loss": mean(stats.meta_loss_sum, stats.meta_steps),
            "mean_weight": mean(
                stats.weight_clean + stats.weight_corrupted, stats.n_clean + stats.n_corrupted
            ),
            "zero_weight_steps": stats.zero_weight_steps if stats.weighted_steps else None,
            "largest_weight_share": stats.largest_share,
            **(
                {
                    "mean_weight_clean": mean(stats.weight_clean, stats.n_clean),
                    "mean_weight_corrupted": mean(stats.weight_corrupted, stats.n_corrupted),
                }
                if self.exp.data.noise_known
                else {}
            ),
            **scores,
            "epoch_time": seconds,
            "wall_time": self.wall_time,
        }

    def summary(self, last: dict[str, Any]) -> dict[str, Any]:
        """``summary.json``: the run's result in rounded numbers, their units in ``units``
        (``metrics.jsonl`` keeps every epoch's values unrounded)."""
        e, d = self.exp, self.exp.data

        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(float(value), digits)

        return {
            "preset": e.cfg.preset,
            "method": e.cfg.method.name,
            "seed": int(e.cfg.seed),
            "epochs_done": self.epoch,
            "epochs_total": e.total_epochs,
            "best_epoch": self.best["epoch"],
            "best_test_acc": rounded(self.best["test_acc"], 2) if self.best["epoch"] else None,
            "last_epoch": last.get("epoch"),
            "last_test_acc": rounded(last.get("test_acc"), 2),
            "train_samples": len(d.train_labels),
            "meta_samples": len(d.meta_labels),
            "val_samples": 0 if d.val_labels is None else len(d.val_labels),
            "test_samples": len(d.test_labels),
            **self._validation(last),
            "noise_known": d.noise_known,
            "realized_noise_rate": rounded(d.realized_noise_rate, 4),
            "class_counts": self._class_counts(),
            "wall_time": rounded(self.wall_time, 1),
            "units": {
                "best_test_acc": "percent",
                "last_test_acc": "percent",
                **(
                    {
                        "val_majority_acc": "percent of the validation split's given labels",
                        "last_val_acc": "percent of the validation split's given labels",
                        "best_val_acc": "percent of the validation split's given labels",
                        "test_acc_at_best_val": "percent",
                    }
                    if d.val_labels is not None
                    else {}
                ),
                "realized_noise_rate": "share of training labels changed by the noise",
                "wall_time": "seconds of training and evaluation",
            },
            "device": str(e.device),
            "ranks": 1 if self.parallel is None else self.parallel.world_size,
            "mwnet_version": MWNET_VERSION,
            **self._class_clusters(),
            **_weight_check_summary(last),
            "finished": False,
        }

    def _validation(self, last: dict[str, Any]) -> dict[str, Any]:
        """The validation split's accuracy at the last epoch and at its best epoch, with the
        test accuracy there (none of it without a validation split)."""
        if self.exp.data.val_labels is None:
            return {}
        best = self.best_val

        def pct(value: float | None) -> float | None:
            return None if value is None else round(float(value), 2)

        labels = self.exp.data.val_labels
        majority = 100.0 * float(torch.bincount(labels).max()) / len(labels)
        return {
            "val_majority_acc": pct(majority),
            "last_val_acc": pct(last.get("val_acc")),
            "best_val_epoch": best["epoch"],
            "best_val_acc": pct(best["val_acc"]) if best["epoch"] else None,
            "test_acc_at_best_val": pct(best["test_acc"]) if best["epoch"] else None,
        }

    def _class_counts(self) -> dict[str, list[int]]:
        """Training samples per class: by given label, and by true label where known."""
        d = self.exp.data
        counts = {"given": d.class_counts().tolist()}
        if d.noise_known:
            counts["true"] = torch.bincount(d.true_labels, minlength=d.num_classes).tolist()
        return counts

    def _class_clusters(self) -> dict[str, list[int]]:
        """The class-aware net's cluster of each class (0: largest classes), if it has one."""
        weighting = self.exp.method.weighting_net()
        clusters = getattr(weighting[0], "cluster_of_class", None) if weighting else None
        return {} if clusters is None else {"class_clusters": clusters.tolist()}

    # -- the run -------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end of the schedule, or only until epoch ``stop_after`` is saved
        (the run can then be resumed as if it had been interrupted there).

        Holds the run directory's lock meanwhile (taking it again if an earlier ``fit``
        let it go). A run that stops before saving its first epoch (an error, Ctrl-C)
        removes the directory :func:`start` created for it. A finished run's
        ``summary.json`` is written last, with ``"finished": true``.
        """
        claim = self.claim if self.main else None
        if claim is not None:
            claim.lock.acquire()
        try:
            summary = self._fit(stop_after)
        except NonFiniteError as err:
            if claim is not None:
                claim.abandon(_STARTED_FILES)
            raise NonFiniteError(f"{err} [{self._what_is_saved()}]") from err
        except BaseException:
            if claim is not None:
                claim.abandon(_STARTED_FILES)
            raise
        if self.epoch == self.exp.total_epochs and self.main:
            summary = {**summary, "finished": True}
            with self._writing_the_end():
                write_json(self.run_dir / "summary.json", summary)
        if claim is not None:
            claim.release()
        return summary

    def abandon(self) -> None:
        """Let go of the run directory as :meth:`fit` does when it stops early: removed if
        :func:`start` created it and no epoch was saved in it (a no-op after ``fit`` did)."""
        if self.claim is not None:
            self.claim.abandon(_STARTED_FILES)

    def close(self) -> None:
        """Let go of the run directory (a no-op if :meth:`fit` already did)."""
        if self.claim is not None:
            self.claim.release()

    def _what_is_saved(self) -> str:
        if not self.epoch:
            return "in epoch 1: nothing was saved"
        return (
            f"in epoch {self.epoch + 1}: epochs 1-{self.epoch} are saved in {self.run_dir}, but "
            "resuming would repeat the same steps; start a new run (e.g. a lower optim.lr)"
        )

    def _fit(self, stop_after: int | None) -> dict[str, Any]:
        e = self.exp
        record: dict[str, Any] = {}
        end = e.total_epochs if stop_after is None else min(stop_after, e.total_epochs)
        while self.epoch < end:
            start = time.perf_counter()
            picked = self._pick_pseudo_meta()
            stats = self._train_epoch()
            if e.schedule.last_epoch < int(e.cfg.optim.epochs):
                e.schedule.step()  # the configured epochs only, counted from a restart
            if self.parallel is not None:
                self.parallel.average_buffers(e.model)
                for network in e.method.networks().values():
                    self.parallel.average_buffers(network)
                if e.teacher is not None:
                    self.parallel.average_buffers(e.teacher.module)
            scores, seen = self._evaluate()
            if seen is not None:
                self.signals.record_epoch(seen)
            scores = {**scores, **self._check_weights(stats)}
            self.last_test_acc = scores["test_acc"]
            seconds = time.perf_counter() - start
            self.wall_time += seconds
            self.loss_range = [
                min(self.loss_range[0], stats.loss_min),
                max(self.loss_range[1], stats.loss_max),
            ]
            record = {**self._record(stats, scores, seconds), **picked}
            self.epoch += 1
            if scores["test_acc"] is not None and scores["test_acc"] > self.best["test_acc"]:
                self.best = {"epoch": self.epoch, "test_acc": scores["test_acc"]}
            val = scores.get("val_acc")
            if val is not None and val > self.best_val["val_acc"]:
                self.best_val = {
                    "epoch": self.epoch,
                    "val_acc": val,
                    "test_acc": scores["test_acc"],
                }
            self._save(record)
            self._log(record)
        if self.epoch == e.total_epochs and self.main:
            with self._writing_the_end():
                self.finish()
        if self.parallel is not None:  # the job ends when rank 0 has written everything
            self.parallel.barrier()
        return self.summary(record or self._last_record())

    def _last_record(self) -> dict[str, Any]:
        records = read_jsonl(self.run_dir / METRICS)
        return records[-1] if records else {}

    def _log(self, r: dict[str, Any]) -> None:
        if not self.main:
            return
        parts = [f"epoch {r['epoch']}/{self.exp.total_epochs}", f"loss {r['train_loss']:.4f}"]
        if self.label:
            parts[0] = f"[{self.label}] {parts[0]}"
        parts.append(f"test acc {r['test_acc']:.2f}%")
        if r.get("val_acc") is not None:
            parts.append(f"val acc {r['val_acc']:.2f}%")
        clean, corrupted = r.get("mean_weight_clean"), r.get("mean_weight_corrupted")
        if clean is not None and corrupted is not None:
            parts.append(f"weight clean/corrupted {clean:.3f}/{corrupted:.3f}")
        elif r.get("mean_weight") is not None:
            parts.append(f"mean weight {r['mean_weight']:.3f}")
        if r.get("zero_weight_steps"):
            parts.append(
                f"WARNING: every weight was 0 on {r['zero_weight_steps']} steps, which learned "
                "nothing from the data (the weighting net trusts no sample: its curve has "
                "collapsed; see docs/PERFORMANCE.md)"
            )
        if r.get("weights_favour_suspects"):
            parts.append(
                f"WARNING: {ADVICE} (weights vs label score: rank correlation "
                f"{r['weight_score_corr']:+.2f})"
            )
        if r.get("meta_size") is not None:
            right = r.get("meta_precision")
            right = "" if right is None else f", {100 * right:.0f}% labels right"
            short = r.get("meta_short_classes") or []
            short = f", all samples of short class(es) {short}" if short else ""
            parts.append(f"pseudo-meta {r['meta_size']}{right}{short}")
        parts.append(f"{r['epoch_time']:.1f}s")
        tqdm.write(" | ".join(parts), file=sys.stderr)

    @contextlib.contextmanager
    def _writing_the_end(self) -> Any:
        """A failed write of the end-of-run files (a full disk) as one line naming the file:
        every epoch is saved, and a resume writes them again."""
        try:
            yield
        except OSError as err:
            saved = "its 1 epoch is" if self.epoch == 1 else f"all {self.epoch} epochs are"
            raise RunDirError(
                f"cannot write the end-of-run files of {self.run_dir} ({_failed_write(err)}); "
                f"{saved} saved: fix that (free space, ...), then mwnet train --resume "
                f"{self.run_dir} writes them"
            ) from err

    def finish(self) -> list[Path]:
        """The model file, per-sample final weights, the learned weighting function and
        net, and the plots."""
        e, d = self.exp, self.exp.data
        test_acc = self._last_record().get("test_acc")
        save_model_file(self.run_dir / MODEL_FILE, model_fields(e, self.epoch, test_acc))
        weighting = e.method.weighting_net()
        if weighting is not None:
            net, normalize = weighting
            save_weight_net(self.run_dir / WEIGHT_NET_FILE, net, normalize=normalize)
        if self.signals.has_weights:
            truth = {"true_label": d.true_labels, "corrupted": d.corrupted}
            write_sample_weights(
                self.run_dir / "sample_weights.csv",
                d.train_index,
                d.train_labels,
                self.signals.last_loss,
                self.signals.last_weight,
                paths=d.paths,
                **(truth if d.noise_known else {}),
            )
        low, high = self.loss_range
        if low <= high:
            grid = self._loss_grid(low, high).to(e.device)
            with torch.no_grad():
                weights = e.method.weighting_function(grid)
            if weights is not None:
                write_weight_function(
                    self.run_dir / "weight_function.csv", grid.cpu(), weights.float().cpu()
                )
        return plot_run(self.run_dir)

    def _loss_grid(self, low: float, high: float) -> torch.Tensor:
        """Where to sample the learned weighting function: the whole range of losses the
        run saw, and densely where the final losses lie (a few samples' large losses
        would otherwise leave the bulk of them a handful of points)."""
        points = [torch.linspace(low, high, 200, dtype=torch.float64)]
        final = self.signals.last_loss[torch.isfinite(self.signals.last_loss)]
        if len(final):
            bulk = min(high, float(np.quantile(final.double().numpy(), 0.995)) * 1.1)
            if bulk > low:
                points.append(torch.linspace(low, bulk, 200, dtype=torch.float64))
        return torch.cat(points).unique().float()


def _weight_check_summary(last: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's weight check for ``summary.json``, for runs that weight samples."""
    if "weight_score_corr" not in last:
        return {}
    corr, flagged = last["weight_score_corr"], last.get("weights_favour_suspects")
    check = {
        "weight_score_corr": None if corr is None else round(float(corr), 4),
        "curve_trend": None if last.get("curve_trend") is None else round(last["curve_trend"], 4),
        "favours_suspect_labels": flagged,
    }
    if flagged:
        check["advice"] = ADVICE
    return {"weight_check": check}


def _failed_write(err: OSError) -> str:
    """``No space left on device, writing checkpoint.pt``: the cause and the file."""
    cause = err.strerror or str(err)
    return f"{cause}, writing {Path(err.filename).name}" if err.filename else cause


def _duration(seconds: float) -> str:
    """``"1h05m"``, ``"4m10s"`` or ``"37s"``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def new_run_dir(cfg: Any) -> RunClaim:
    """Create and lock ``out_dir/name``, or a fresh ``out_dir/<preset>-<method>-seed<seed>[-N]``.

    One ``mkdir`` decides who gets a fresh name, so two runs started at once never share a
    directory; a named directory that holds a run (or is in use) is refused.
    """
    out = Path(cfg.out_dir)
    if cfg.name:
        claim = claim_run_dir(out / cfg.name, create=True)
        if (claim.run_dir / CHECKPOINT).exists():
            claim.release()
            raise FileExistsError(
                f"{claim.run_dir} already holds a run; resume it with `mwnet train --resume "
                f"{claim.run_dir}` or choose another name=..."
            )
        return claim
    return claim_fresh(out, f"{cfg.preset or 'custom'}-{cfg.method.name}-seed{cfg.seed}")


_CLAIM_ERRORS = {c.__name__: c for c in (FileExistsError, RunDirError, RunDirBusy)}


def _claimed(claim: Any, parallel: DataParallel | None) -> tuple[RunClaim | None, Path]:
    """Rank 0 claims the run directory (``claim()``); every rank learns its path, or rank
    0's error, which every rank then raises."""
    if parallel is None:
        mine = claim()
        return mine, mine.run_dir
    mine, outcome = None, ("", None, None)
    if parallel.is_main:
        try:
            mine = claim()
            outcome = (str(mine.run_dir), None, None)
        except tuple(_CLAIM_ERRORS.values()) as err:
            outcome = ("", type(err).__name__, str(err))
    path, kind, message = parallel.broadcast(outcome)
    if kind is not None:
        raise _CLAIM_ERRORS[kind](message)
    return mine, Path(path)


def start(
    cfg: Any, quiet: bool = False, parallel: DataParallel | None = None
) -> tuple[Trainer, Path]:
    """A new run: claims the run directory and saves the resolved config in it before any
    data is read; an error before the trainer exists gives the directory back."""
    claim, run_dir = _claimed(lambda: new_run_dir(cfg), parallel)
    try:
        if claim is not None:
            with atomic_write(run_dir / CONFIG) as f:
                f.write(to_yaml(cfg))
        trainer = Trainer(build_experiment(cfg, parallel=parallel), run_dir, quiet, parallel)
        if claim is not None and trainer.exp.data.paths is not None:
            write_paths(run_dir / PATHS_FILE, trainer.exp.data.paths)
    except BaseException:
        if claim is not None:
            claim.abandon((CONFIG, PATHS_FILE))
        raise
    trainer.claim = claim
    return trainer, run_dir


def restore(
    trainer: Trainer,
    state: dict[str, Any],
    path: Path,
    allow_change: tuple[str, ...] = (),
    evaluating: bool = False,
) -> None:
    """Load a checkpoint's state into ``trainer`` after checking that it is this run's:
    the same config (see :mod:`mwnet.train.resume_check`; the keys in ``allow_change``
    may differ, and when ``evaluating`` every key that does not change what was trained)
    and the same data. Anything else that does not fit (another model, damaged contents)
    is a :class:`CheckpointError` naming the file."""
    check_config(state, trainer.exp.cfg, trainer.run_dir, path, allow_change, evaluating)
    saved_crc = state.get("data_crc")
    if saved_crc is not None and saved_crc != trainer.data_crc:
        raise CheckpointError(
            f"{path}: the run was trained on other data than data.* loads now (the dataset "
            "files changed, or data.root points at another copy); point data.root at the "
            "files it was trained on, or start a new run"
        )
    try:
        trainer.load_state_dict(state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(
            f"{path}: this checkpoint does not fit the run in {trainer.run_dir} ({detail}); "
            "it is damaged or belongs to another run: use that run's directory, or start anew"
        ) from err


def check_config(
    state: dict[str, Any],
    cfg: Any,
    run_dir: Path,
    path: Path,
    allow_change: tuple[str, ...] = (),
    evaluating: bool = False,
) -> None:
    """The checkpoint's config against ``cfg`` (from ``run_dir/config.yaml``)."""
    try:
        done = int(state["epoch"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: damaged checkpoint (no epoch count in it)") from None
    resume_check.check_resume_config(
        state.get("config"),
        cfg,
        str(run_dir / CONFIG),
        allow=tuple(resume_check.SAFE_CHANGES) if evaluating else allow_change,
        epochs_done=None if evaluating else done,
    )


def resume(
    run_dir: Path,
    quiet: bool = False,
    parallel: DataParallel | None = None,
    allow_change: tuple[str, ...] = (),
) -> Trainer:
    """Rebuild a run from its saved config and continue after its last finished epoch.

    The run directory is locked first; the checkpoint's config is compared with
    ``config.yaml`` before any data is read (see :mod:`mwnet.train.resume_check`; the keys
    in ``allow_change`` may differ). Under data parallelism every rank loads the same
    checkpoint, on any number of ranks.
    """
    run_dir = Path(run_dir)
    allow_change = resume_check.check_allowed(allow_change)
    cfg = run_config(run_dir)
    claim, _ = _claimed(lambda: claim_run_dir(run_dir), parallel)
    try:
        checkpoint = run_dir / CHECKPOINT
        state = load_checkpoint(checkpoint) if checkpoint.exists() else None
        if state is not None:  # before any data is read
            check_config(state, cfg, run_dir, checkpoint, allow_change)
            _check_history(run_dir, state)
        trainer = Trainer(build_experiment(cfg, parallel=parallel), run_dir, quiet, parallel)
        if state is not None:
            restore(trainer, state, checkpoint, allow_change)
        done = trainer.epoch
        if parallel is not None:  # every rank has read the checkpoint before rank 0 writes again
            parallel.barrier()
        metrics = run_dir / METRICS
        if metrics.exists() and trainer.main:
            truncate_jsonl(metrics, lambda r: int(r.get("epoch", 0)) <= done)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    trainer.claim = claim
    return trainer


def _check_history(run_dir: Path, state: dict[str, Any]) -> None:
    """A run with saved epochs must still have their ``metrics.jsonl``: resuming without
    it would start a new history at the next epoch, and the plots, the summary's best
    epoch and the suite's reading would lose every epoch before it without a word."""
    done = int(state["epoch"])
    metrics = run_dir / METRICS
    if done and not metrics.is_file():
        raise FileNotFoundError(
            f"{metrics} is missing, but {run_dir / CHECKPOINT} holds {done} trained "
            f"epoch{'s' if done != 1 else ''}: resuming would lose their history; restore "
            "the file (from a backup or a copy of the run), or start a new run"
        )


def summary_finished(summary: dict[str, Any]) -> bool:
    """Whether a run's ``summary.json`` says it has finished: its ``finished`` flag, which
    the loop sets only after the last epoch's files and plots are written (older runs,
    without the flag: all epochs done)."""
    if "finished" in summary:
        return bool(summary["finished"])
    return summary["epochs_done"] == summary["epochs_total"]


def finished(run_dir: Path) -> bool:
    """The run trained its whole schedule and wrote its end-of-run files."""
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file():
        return False
    return summary_finished(read_json(summary)) and (Path(run_dir) / "accuracy.png").is_file()


def train_to_end(
    cfg: Any, quiet: bool = True, label: str | None = None
) -> tuple[dict[str, Any], Path, str]:
    """Train the run ``cfg`` names (``out_dir/name``) to the end of its schedule.

    A new directory starts the run, an unfinished one is resumed, a finished one is only
    read; a directory holding a run of another configuration is refused, never mixed in.

    ``label`` prefixes the run's epoch lines (several runs writing to one terminal).

    Returns:
        ``(summary, run_dir, status)``, status ``"trained"``, ``"resumed"`` or ``"done"``.
    """
    if not cfg.name:
        raise ValueError("train_to_end needs a config with a name (its run directory)")
    run_dir = Path(cfg.out_dir) / cfg.name
    if (run_dir / CONFIG).is_file():
        # where the directory lives is not part of the run: a moved run is the same run
        changed = resume_check.config_changes(
            resume_check.config_snapshot(load_config_file(run_dir / CONFIG)),
            resume_check.config_snapshot(cfg),
        )
        if changed:
            key, (old, new) = next(iter(changed.items()))
            raise FileExistsError(
                f"{run_dir} holds a run with a different configuration ({key}: {old!r} there, "
                f"{new!r} here{f', and {len(changed) - 1} more' if len(changed) > 1 else ''}); "
                "delete it or choose another output directory"
            )
        if finished(run_dir):
            return read_json(run_dir / "summary.json"), run_dir, "done"
        trainer, status = resume(run_dir, quiet=quiet), "resumed"
    else:
        trainer, _ = start(cfg, quiet=quiet)
        status = "trained"
    trainer.label = label
    summary = trainer.fit()
    if trainer.epoch == trainer.exp.total_epochs and not (run_dir / "accuracy.png").is_file():
        trainer.finish()
    return summary, run_dir, status
