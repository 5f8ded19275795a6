"""A weighting net as data: what is needed to rebuild it, so a learned net can be reused.

A learned weighting net is an artefact of its own (CMW-Net transfers one, frozen, to
another dataset). Saving only its state dict is not enough: rebuilding it needs its kind,
its sizes and, for the class-aware net, the class counts it was clustered on. The spec is
plain data (str, int, lists), so a file holding it loads with ``weights_only=True``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mwnet.core.class_aware import ClassAwareWeightNet
from mwnet.core.weight_net import WeightNet

WEIGHT_NET_KINDS: tuple[str, ...] = ("mwnet", "cmwnet")
"""``mwnet``: :class:`WeightNet`; ``cmwnet``: :class:`ClassAwareWeightNet`."""


def weight_net_spec(net: nn.Module) -> dict[str, Any]:
    """The kind and sizes of one of the shipped weighting nets, as plain data."""
    if isinstance(net, ClassAwareWeightNet):
        return {
            "kind": "cmwnet",
            "hidden": net.hidden,
            "clusters": net.clusters,
            "class_counts": [int(c) for c in net.class_counts],
        }
    if isinstance(net, WeightNet):
        return {"kind": "mwnet", "hidden": net.hidden, "depth": net.depth}
    raise TypeError(
        f"only WeightNet and ClassAwareWeightNet can be described for reuse, not "
        f"{type(net).__name__}; save a custom net's state_dict yourself"
    )


def build_weight_net(spec: dict[str, Any]) -> nn.Module:
    """A fresh (untrained) net of the kind and sizes ``spec`` describes."""
    kind = spec.get("kind")
    if kind == "mwnet":
        return WeightNet(hidden=int(spec["hidden"]), depth=int(spec["depth"]))
    if kind == "cmwnet":
        return ClassAwareWeightNet(
            spec["class_counts"], clusters=int(spec["clusters"]), hidden=int(spec["hidden"])
        )
    raise ValueError(f"unknown weighting-net kind {kind!r}; expected one of {WEIGHT_NET_KINDS}")
