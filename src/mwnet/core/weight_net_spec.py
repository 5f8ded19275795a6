"""A weighting net as data: what is needed to rebuild it, so a learned net can be reused.

A learned weighting net is an artefact of its own (CMW-Net transfers one, frozen, to
another dataset). Saving only its state dict is not enough: rebuilding it needs its kind,
its sizes, for the class-aware net the class counts it was clustered on, and what it reads
about each sample (its inputs, how each is transformed, the decay of the per-sample
averages and the length of the loss sequence among them): a net fed other inputs than it
learned on computes nonsense. The spec is plain data (str, int, float, lists, dicts), so a
file holding it loads with ``weights_only=True``. Specs written before nets had inputs hold
none: they read the loss.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mwnet.core.class_aware import ClassAwareWeightNet
from mwnet.core.weight_inputs import LOSS_ONLY, TRANSFORMS, check_inputs
from mwnet.core.weight_net import WeightNet

WEIGHT_NET_KINDS: tuple[str, ...] = ("mwnet", "cmwnet")
"""``mwnet``: :class:`WeightNet`; ``cmwnet``: :class:`ClassAwareWeightNet`."""


def weight_net_spec(net: nn.Module) -> dict[str, Any]:
    """The kind, sizes and inputs of one of the shipped weighting nets, as plain data."""
    if isinstance(net, ClassAwareWeightNet):
        spec: dict[str, Any] = {
            "kind": "cmwnet",
            "hidden": net.hidden,
            "clusters": net.clusters,
            "class_counts": [int(c) for c in net.class_counts],
        }
    elif isinstance(net, WeightNet):
        spec = {"kind": "mwnet", "hidden": net.hidden, "depth": net.depth}
        if net.num_classes is not None:
            spec["num_classes"] = net.num_classes
    else:
        raise TypeError(
            f"only WeightNet and ClassAwareWeightNet can be described for reuse, not "
            f"{type(net).__name__}; save a custom net's state_dict yourself"
        )
    spec["inputs"] = list(net.inputs)
    spec["transforms"] = {name: TRANSFORMS[name] for name in net.inputs}
    if net.dynamics_decay is not None:
        spec["dynamics_decay"] = net.dynamics_decay
    if net.history is not None:
        spec["history"] = net.history
    return spec


def spec_inputs(spec: dict[str, Any]) -> tuple[str, ...]:
    """The inputs a spec's net reads (the loss alone for a spec written before inputs)."""
    return tuple(spec.get("inputs", LOSS_ONLY))


def build_weight_net(spec: dict[str, Any]) -> nn.Module:
    """A fresh (untrained) net of the kind, sizes and inputs ``spec`` describes.

    Raises:
        ValueError: an unknown kind or input, or inputs transformed otherwise than this
            version of mwnet transforms them.
    """
    kind = spec.get("kind")
    inputs = check_inputs(spec_inputs(spec))
    transforms = spec.get("transforms", {name: TRANSFORMS[name] for name in inputs})
    changed = [n for n in inputs if transforms.get(n) != TRANSFORMS[n]]
    if changed:
        raise ValueError(
            f"the net's inputs {', '.join(changed)} were transformed as "
            f"{', '.join(str(transforms.get(n)) for n in changed)}, but this mwnet feeds them "
            f"as {', '.join(TRANSFORMS[n] for n in changed)}"
        )
    decay = spec.get("dynamics_decay")
    history = spec.get("history")
    history = None if history is None else int(history)
    if kind == "mwnet":
        return WeightNet(
            hidden=int(spec["hidden"]),
            depth=int(spec["depth"]),
            inputs=inputs,
            num_classes=spec.get("num_classes"),
            dynamics_decay=None if decay is None else float(decay),
            history=history,
        )
    if kind == "cmwnet":
        return ClassAwareWeightNet(
            spec["class_counts"],
            clusters=int(spec["clusters"]),
            hidden=int(spec["hidden"]),
            inputs=inputs,
            dynamics_decay=None if decay is None else float(decay),
            history=history,
        )
    raise ValueError(f"unknown weighting-net kind {kind!r}; expected one of {WEIGHT_NET_KINDS}")
