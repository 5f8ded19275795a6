"""``weight_net.pt``: a learned weighting net saved for reuse in another run.

The file is an mwnet checkpoint (atomic write, ``weights_only=True`` load, one-line
errors) whose state holds the net's spec (:mod:`mwnet.core.weight_net_spec`: kind, sizes,
and what it reads about each sample with each input's transform, the decay of the
per-sample averages and the length of the loss sequence), its state dict and the weight
normalisation it was learned with: the learned curve's scale only means something under
that normalisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mwnet.core.weight_net import net_inputs
from mwnet.core.weight_net_spec import build_weight_net, weight_net_spec
from mwnet.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

WEIGHT_NET_FILE = "weight_net.pt"


@dataclass(frozen=True)
class SavedWeightNet:
    """A weighting net read back from a file, with what it was learned under."""

    net: nn.Module
    kind: str
    """``mwnet`` (:class:`mwnet.WeightNet`) or ``cmwnet`` (:class:`mwnet.ClassAwareWeightNet`)."""
    normalize: str
    path: Path

    @property
    def num_classes(self) -> int | None:
        """Classes a class-aware net, or a net with the ``class`` input, was built for;
        None for a net that ignores labels."""
        return getattr(self.net, "num_classes", None)

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the net reads about each sample (``("loss",)`` for MW-Net's net, and for
        every file written before nets had other inputs)."""
        return net_inputs(self.net)

    @property
    def dynamics_decay(self) -> float | None:
        """The decay of the per-sample averages among its inputs; None without them."""
        return getattr(self.net, "dynamics_decay", None)

    @property
    def history(self) -> int | None:
        """The visits of its ``loss_history`` input; None without it."""
        return getattr(self.net, "history", None)


def save_weight_net(path: str | os.PathLike[str], net: nn.Module, *, normalize: str) -> None:
    """Write ``net`` (a :class:`~mwnet.WeightNet` or :class:`~mwnet.ClassAwareWeightNet`)
    to ``path`` atomically, with the normalisation (``sum``/``mean``/``none``) it used."""
    state = {
        "weight_net": {
            "spec": weight_net_spec(net),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "normalize": normalize,
        }
    }
    save_checkpoint(path, state)


def load_weight_net(path: str | os.PathLike[str]) -> SavedWeightNet:
    """Read a net written by :func:`save_weight_net`; ``path`` may also be a run directory.

    Raises:
        CheckpointError: missing, unreadable or corrupt file, or not a weighting net (one
            line naming the file and the fix).
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NET_FILE
    if not path.exists():
        raise CheckpointError(
            f"{path}: no saved weighting net there; point at the run directory of a finished "
            f"mwnet or cmwnet run, or at its {WEIGHT_NET_FILE}"
        )
    state = load_checkpoint(path)
    saved = state.get("weight_net")
    if not isinstance(saved, dict) or not {"spec", "state_dict", "normalize"} <= saved.keys():
        raise CheckpointError(
            f"{path}: an mwnet checkpoint, but not a saved weighting net; point at the "
            f"{WEIGHT_NET_FILE} of an mwnet or cmwnet run"
        )
    try:
        net = build_weight_net(saved["spec"])
        net.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path}: the saved weighting net cannot be rebuilt ({detail}); the file is "
            "damaged or from another mwnet version"
        ) from None
    return SavedWeightNet(net, saved["spec"]["kind"], str(saved["normalize"]), path)
