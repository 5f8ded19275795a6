"""Where a loss-only method is in its run, from the epoch alone (so that a resume is exact).

Curriculum baselines change with training: MentorNet's authors count progress in percent
of training, the truncated L_q loss starts after a share of the epochs, self-paced learning
admits more of each batch as epochs pass. Each derives that from the epoch the loop passes
to :meth:`~mwnet.methods.base.Method.begin_epoch` and the configured number of epochs,
never from a counter of its own.
"""

from __future__ import annotations


def configured_epochs(epochs: int | None, method: str, option: str) -> int:
    """The configured training epochs, which ``method`` needs to place its schedule.

    Raises:
        ValueError: ``epochs`` is missing or not an integer >= 1; the message names the
            option that would make it unnecessary.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"{method} places its schedule in the run, so it needs options['epochs'], the "
            f"configured training epochs (an integer >= 1), got {epochs!r}; or set {option}"
        )
    return epochs


def check_epoch_option(value: int | None, key: str) -> int | None:
    """An epoch number option: None (its default from the run's length) or an int >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an epoch number >= 0 or null, got {value!r}")
    return value


def percent_of_training(epoch: int, epochs: int) -> int:
    """⌊100·epoch / epochs⌋: MentorNet's unit of progress (0 .. 99 within the run), taken
    at the start of the epoch."""
    return (100 * epoch) // epochs
