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

import torch
from tqdm import tqdm

from mwnet.data import pseudo_meta_precision, select_pseudo_meta
from mwnet.distributed import DataParallel, FaultHook
from mwnet.run import (
    append_jsonl,
    interrupt_deferred,
    load_checkpoint,
    plot_run,
    read_jsonl,
    save_checkpoint,
    truncate_jsonl,
    write_json,
    write_sample_weights,
    write_weight_function,
)
from mwnet.run.weight_net_file import WEIGHT_NET_FILE, save_weight_net
from mwnet.train.config import load_config_file, to_yaml
from mwnet.train.evaluate import accuracy, predict
from mwnet.train.experiment import Experiment, build_experiment
from mwnet.train.pseudo_meta_set import score_training_set

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


@dataclass
class EpochStats:
    """Running sums over one epoch's training steps."""

    loss_sum: float = 0.0
    steps: int = 0
    meta_loss_sum: float = 0.0
    meta_steps: int = 0
    weight_clean: float = 0.0
    n_clean: int = 0
    weight_corrupted: float = 0.0
    n_corrupted: int = 0
    loss_min: float = float("inf")
    loss_max: float = float("-inf")


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
        self.epoch = 0
        self.wall_time = 0.0
        self.loss_range = [float("inf"), float("-inf")]
        self.best = {"epoch": None, "test_acc": float("-inf")}
        self.last_test_acc: float | None = None
        n = len(exp.data.train_labels)
        self.last_loss = torch.full((n,), float("nan"))
        self.last_weight = torch.full((n,), float("nan"))

    # -- checkpointing -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        e = self.exp
        return {
            "epoch": self.epoch,
            "wall_time": self.wall_time,
            "loss_range": list(self.loss_range),
            "best": dict(self.best),
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
            "last_loss": self.last_loss,
            "last_weight": self.last_weight,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        e = self.exp
        self.epoch = int(state["epoch"])
        self.wall_time = float(state["wall_time"])
        self.loss_range = [float(v) for v in state["loss_range"]]
        self.best = dict(state["best"])
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
        self.last_loss = state["last_loss"]
        self.last_weight = state["last_weight"]

    def _save(self, record: dict[str, Any]) -> None:
        """Metrics line, checkpoint, summary: written together, Ctrl-C deferred; rank 0 only."""
        if not self.main:
            return
        with interrupt_deferred():
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())
            write_json(self.run_dir / "summary.json", self.summary(record))

    # -- one epoch -----------------------------------------------------------------
    def _train_epoch(self) -> EpochStats:
        e, stats, parallel = self.exp, EpochStats(), self.parallel
        if parallel is not None:
            torch.manual_seed(_rank_seed(int(e.cfg.seed), self.epoch, parallel.rank))
        method = e.method_at(self.epoch)
        method.begin_epoch(self.epoch)
        teacher, freeze = e.teacher, e.cfg.method.teacher_freeze_epoch
        if teacher is not None and freeze is not None and self.epoch >= int(freeze):
            teacher.freeze()  # for good: saved with it, so a resumed run stays frozen
        from_meta = method.source(self.epoch) == "meta"
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
                    out = method.step(x, y)
                losses, weights = out.losses, out.weights
            else:
                if self.fault is not None:
                    self.fault.at(parallel.rank, method.steps_done)
                with _autocast(e):
                    out = method.step(parallel.shard(x), parallel.shard(y))
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
                cpu_idx = idx.cpu()
                self.last_loss[cpu_idx] = losses.float().cpu()
                if weights is not None:
                    w, bad = weights.float(), corrupted[idx]
                    self.last_weight[cpu_idx] = w.cpu()
                    stats.weight_corrupted += float(w[bad].sum())
                    stats.n_corrupted += int(bad.sum())
                    stats.weight_clean += float(w[~bad].sum())
                    stats.n_clean += int((~bad).sum())
            postfix = {"loss": f"{stats.loss_sum / stats.steps:.3f}"}
            if self.last_test_acc is not None:
                postfix["test_acc"] = f"{self.last_test_acc:.2f}%"
            bar.set_postfix(postfix, refresh=False)
        return stats

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
        e, d = self.exp, self.exp.data
        model = e.model if model is None else model
        bs = int(e.cfg.data.eval_batch_size)
        pred, _ = predict(model, d.test_images, d.test_labels, e.normalize, e.device, bs)
        out = {"test_acc": accuracy(pred, d.test_labels)}
        if e.cfg.eval_train:
            pred, _ = predict(model, d.train_images, d.true_labels, e.normalize, e.device, bs)
            out["train_acc_clean"] = accuracy(pred, d.true_labels, ~d.corrupted)
            out["train_acc_corrupted"] = accuracy(pred, d.true_labels, d.corrupted)
            out["memorized_corrupted"] = accuracy(pred, d.train_labels, d.corrupted)
        return out

    def _record(self, stats: EpochStats, scores: dict, seconds: float) -> dict[str, Any]:
        def mean(total: float, count: int) -> float | None:
            return total / count if count else None

        return {
            "epoch": self.epoch + 1,
            "lr": self.exp.optimizer.param_groups[0]["lr"],
            "train_loss": mean(stats.loss_sum, stats.steps),
            "meta_loss": mean(stats.meta_loss_sum, stats.meta_steps),
            "mean_weight_clean": mean(stats.weight_clean, stats.n_clean),
            "mean_weight_corrupted": mean(stats.weight_corrupted, stats.n_corrupted),
            **scores,
            "epoch_time": seconds,
            "wall_time": self.wall_time,
        }

    def summary(self, last: dict[str, Any]) -> dict[str, Any]:
        e, d = self.exp, self.exp.data
        return {
            "preset": e.cfg.preset,
            "method": e.cfg.method.name,
            "seed": int(e.cfg.seed),
            "epochs_done": self.epoch,
            "epochs_total": e.total_epochs,
            "best_epoch": self.best["epoch"],
            "best_test_acc": self.best["test_acc"] if self.best["epoch"] else None,
            "last_epoch": last.get("epoch"),
            "last_test_acc": last.get("test_acc"),
            "train_samples": len(d.train_labels),
            "meta_samples": len(d.meta_labels),
            "realized_noise_rate": d.realized_noise_rate,
            "wall_time": self.wall_time,
            "device": str(e.device),
            "ranks": 1 if self.parallel is None else self.parallel.world_size,
            **self._class_clusters(),
        }

    def _class_clusters(self) -> dict[str, list[int]]:
        """The class-aware net's cluster of each class (0: largest classes), if it has one."""
        weighting = self.exp.method.weighting_net()
        clusters = getattr(weighting[0], "cluster_of_class", None) if weighting else None
        return {} if clusters is None else {"class_clusters": clusters.tolist()}

    # -- the run -------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end of the schedule, or only until epoch ``stop_after`` is saved
        (the run can then be resumed as if it had been interrupted there)."""
        e = self.exp
        record: dict[str, Any] = {}
        end = e.total_epochs if stop_after is None else min(stop_after, e.total_epochs)
        while self.epoch < end:
            start = time.perf_counter()
            picked = self._pick_pseudo_meta()
            stats = self._train_epoch()
            if self.epoch < int(e.cfg.optim.epochs):
                e.schedule.step()
            if self.parallel is not None:
                self.parallel.average_buffers(e.model)
                if e.teacher is not None:
                    self.parallel.average_buffers(e.teacher.module)
            scores = self.evaluate()
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
            self._save(record)
            self._log(record)
        if self.epoch == e.total_epochs and self.main:
            self.finish()
        if self.parallel is not None:  # the job ends when rank 0 has written everything
            self.parallel.barrier()
        return self.summary(record or self._last_record())

    def _last_record(self) -> dict[str, Any]:
        records = read_jsonl(self.run_dir / "metrics.jsonl")
        return records[-1] if records else {}

    def _log(self, r: dict[str, Any]) -> None:
        if not self.main:
            return
        parts = [f"epoch {r['epoch']}/{self.exp.total_epochs}", f"loss {r['train_loss']:.4f}"]
        parts.append(f"test acc {r['test_acc']:.2f}%")
        clean, corrupted = r.get("mean_weight_clean"), r.get("mean_weight_corrupted")
        if clean is not None and corrupted is not None:
            parts.append(f"weight clean/corrupted {clean:.3f}/{corrupted:.3f}")
        if r.get("meta_size") is not None:
            right = r.get("meta_precision")
            right = "" if right is None else f", {100 * right:.0f}% labels right"
            short = r.get("meta_short_classes") or []
            short = f", all samples of short class(es) {short}" if short else ""
            parts.append(f"pseudo-meta {r['meta_size']}{right}{short}")
        parts.append(f"{r['epoch_time']:.1f}s")
        tqdm.write(" | ".join(parts), file=sys.stderr)

    def finish(self) -> list[Path]:
        """Per-sample final weights, the learned weighting function and net, and the plots."""
        e, d = self.exp, self.exp.data
        weighting = e.method.weighting_net()
        if weighting is not None:
            net, normalize = weighting
            save_weight_net(self.run_dir / WEIGHT_NET_FILE, net, normalize=normalize)
        if not torch.isnan(self.last_weight).all():
            write_sample_weights(
                self.run_dir / "sample_weights.csv",
                torch.arange(len(d.train_labels)),
                d.train_labels,
                d.true_labels,
                d.corrupted,
                self.last_loss,
                self.last_weight,
            )
        low, high = self.loss_range
        if low <= high:
            grid = torch.linspace(low, high, 200, device=e.device)
            with torch.no_grad():
                weights = e.method.weighting_function(grid)
            if weights is not None:
                write_weight_function(
                    self.run_dir / "weight_function.csv", grid.cpu(), weights.float().cpu()
                )
        return plot_run(self.run_dir)


def new_run_dir(cfg: Any) -> Path:
    """``out_dir/name``, or a fresh ``out_dir/<preset>-<method>-seed<seed>[-N]``."""
    out = Path(cfg.out_dir)
    if cfg.name:
        run_dir = out / cfg.name
        if (run_dir / CHECKPOINT).exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; resume it with `mwnet train --resume {run_dir}` "
                "or choose another name=..."
            )
        return run_dir
    stem = f"{cfg.preset or 'custom'}-{cfg.method.name}-seed{cfg.seed}"
    run_dir, n = out / stem, 1
    while run_dir.exists():
        n += 1
        run_dir = out / f"{stem}-{n}"
    return run_dir


def _agreed_run_dir(cfg: Any, parallel: DataParallel | None) -> Path:
    """Rank 0 picks the run directory (or the error) and every rank gets the same answer."""
    if parallel is None:
        return new_run_dir(cfg)
    choice: tuple[str, str | None] = ("", None)
    if parallel.is_main:
        try:
            choice = (str(new_run_dir(cfg)), None)
        except FileExistsError as err:
            choice = ("", str(err))
    path, error = parallel.broadcast(choice)
    if error is not None:
        raise FileExistsError(error)
    return Path(path)


def start(
    cfg: Any, quiet: bool = False, parallel: DataParallel | None = None
) -> tuple[Trainer, Path]:
    """A new run: creates the run directory and saves the resolved config in it."""
    run_dir = _agreed_run_dir(cfg, parallel)
    exp = build_experiment(cfg, parallel=parallel)
    if parallel is None or parallel.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG).write_text(to_yaml(cfg))
    return Trainer(exp, run_dir, quiet, parallel), run_dir


def run_config(run_dir: Path) -> Any:
    """The saved config of the run directory ``run_dir``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG} in it)")
    return load_config_file(run_dir / CONFIG)


def resume(run_dir: Path, quiet: bool = False, parallel: DataParallel | None = None) -> Trainer:
    """Rebuild a run from its saved config and continue after its last finished epoch.

    Under data parallelism every rank loads the same checkpoint, on any number of ranks.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    trainer = Trainer(build_experiment(cfg, parallel=parallel), run_dir, quiet, parallel)
    if (run_dir / CHECKPOINT).exists():
        trainer.load_state_dict(load_checkpoint(run_dir / CHECKPOINT))
    done = trainer.epoch
    if parallel is not None:  # every rank has read the checkpoint before rank 0 writes again
        parallel.barrier()
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and trainer.main:
        truncate_jsonl(metrics, lambda r: int(r.get("epoch", 0)) <= done)
    return trainer
