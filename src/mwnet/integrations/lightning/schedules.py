"""Learning-rate schedules under manual optimisation, stepped where Lightning's automatic
optimisation steps them.

A LightningModule that returns schedulers from ``configure_optimizers`` expects Lightning
to step them: each scheduler config says ``interval`` ("step" or "epoch") and
``frequency``. Under manual optimisation Lightning leaves that to ``training_step``; since
:class:`~mwnet.integrations.lightning.MetaWeighting` switches the module to manual
optimisation for the meta step, it steps them itself, at the points Lightning would
(``lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop._update_learning_rates``
in Lightning 2.x):

* "step" schedulers after every training batch whose index (from 1, within the epoch) is
  a multiple of ``frequency``;
* "epoch" schedulers after the last batch of an epoch whose number (from 1) is a multiple
  of ``frequency``, before the epoch's validation and checkpoint, as Lightning does;
* ``ReduceLROnPlateau`` ("epoch" only) at the end of such an epoch, on the monitored metric.

Differences from Lightning: a ``ReduceLROnPlateau`` steps in ``on_train_epoch_end``, before
Lightning aggregates the epoch's training metrics, so it must monitor a metric known by
then (a validation metric); and one with ``interval="step"`` is refused, since Lightning
steps it after a validation that runs between batches, where no callback hook sits.
"""

from __future__ import annotations

from typing import Any

Trainer = Any  # lightning.pytorch.Trainer, not imported here
LightningModule = Any


def check_schedules(trainer: Trainer) -> None:
    """Refuse what :func:`step_schedules` cannot step as Lightning would."""
    for config in trainer.lr_scheduler_configs:
        if config.reduce_on_plateau and config.interval != "epoch":
            raise ValueError(
                f"a ReduceLROnPlateau with interval={config.interval!r}: MetaWeighting steps "
                "plateau schedulers at the end of an epoch only; return it with "
                '"interval": "epoch"'
            )


def epoch_finished(trainer: Trainer) -> bool:
    """Whether the batch just trained was the last of its epoch (Lightning's own test)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.current.ready == trainer.num_training_batches or progress.is_last_batch


def step_schedules(
    trainer: Trainer, module: LightningModule, interval: str, plateau: bool = False
) -> None:
    """Step the schedulers of ``interval`` ("step": after a batch, "epoch": after an
    epoch's last batch) that are due: non-plateau ones, or with ``plateau`` the
    ``ReduceLROnPlateau`` ones, on their monitored metric."""
    for config in trainer.lr_scheduler_configs:
        if config.reduce_on_plateau != plateau or config.interval != interval:
            continue
        if interval == "step":
            count = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        else:
            count = trainer.current_epoch + 1
        if count % config.frequency != 0:
            continue
        metric = None
        if config.reduce_on_plateau:
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                if config.strict:
                    raise ValueError(
                        f"ReduceLROnPlateau monitors {config.monitor!r}, which is not among the "
                        f"metrics logged by the end of this training epoch "
                        f"({sorted(trainer.callback_metrics)}); monitor a validation metric, "
                        'or return the scheduler with "strict": False to skip such epochs'
                    )
                continue
        module.lr_scheduler_step(config.scheduler, metric)
