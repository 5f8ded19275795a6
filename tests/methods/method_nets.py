"""Tiny models, batches and a builder shared by the methods tests."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.methods import (
    LABEL_CORRECTION_METHODS,
    Method,
    StepOutput,
    build_method,
    method_descriptor,
)

CLASSES = 5


class TinyMlp(nn.Module):
    def __init__(self, d_in: int = 6) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, 8)
        self.out = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


class TinyBnCnn(nn.Module):
    """conv -> BatchNorm -> ReLU -> dropout -> linear on 3x6x6 inputs."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 4 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


SHAPES = {"mlp": (6,), "cnn": (3, 6, 6)}


def make_model(kind: str, dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> nn.Module:
    model = TinyMlp() if kind == "mlp" else TinyBnCnn(dropout)
    return model.to(dtype)


def batch(
    kind: str, seed: int, n: int = 10, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPES[kind], generator=g, dtype=dtype)
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def meta_stream(
    kind: str, dtype: torch.dtype = torch.float32, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless, deterministic meta batches; ``start`` skips ahead (a resumed iterator)."""
    for i in itertools.count(start):
        yield batch(kind, 1000 + i, n=8, dtype=dtype)


TRAINING_SET_SIZE = 40


class TinyTrainingSet:
    """A stand-in for the loop's pass over the training set (a ``SamplePass``): fixed
    random samples of one kind, run through a model in eval mode."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.inputs, self.labels = x, y

    @classmethod
    def of(cls, kind: str, dtype: torch.dtype = torch.float32) -> TinyTrainingSet:
        return cls(*batch(kind, 500, n=TRAINING_SET_SIZE, dtype=dtype))

    def __len__(self) -> int:
        return len(self.labels)

    @torch.no_grad()
    def __call__(self, model: nn.Module, reduce) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return reduce(model(self.inputs), self.labels).double()
        finally:
            model.train(was_training)

    def subset(self, indices: torch.Tensor) -> TinyTrainingSet:
        return TinyTrainingSet(self.inputs[indices], self.labels[indices])


def step(method: Method, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
    """``method.step(x, y)``, with the batch's positions in the training set (the first
    ``len(y)`` of :class:`TinyTrainingSet`) for the methods that keep per-sample state."""
    if method_descriptor(method.name).reads_index:
        return method.step(x, y, index=torch.arange(len(y)))
    return method.step(x, y)


def counts() -> torch.Tensor:
    return torch.tensor([50, 20, 10, 5, 2])


def fixed_soft_labels(x: torch.Tensor) -> torch.Tensor:
    """A stand-in teacher for the label-correction methods: probabilities that depend on
    the inputs alone (a fixed map), so the same batch always gets the same soft labels."""
    flat = x.flatten(1)
    g = torch.Generator().manual_seed(99)
    weights = torch.randn(flat.shape[1], CLASSES, generator=g, dtype=flat.dtype)
    return torch.softmax(flat @ weights, dim=1)


def new_network_like(model: nn.Module) -> Callable[[int], nn.Module]:
    """``new_network(k)`` for the methods that train a second network: a copy of
    ``model`` with every layer initialised afresh from seed ``k``, leaving the global
    random state where it was (as the run's ``new_network`` does)."""

    def new_network(k: int) -> nn.Module:
        network = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7919 * k)
            for layer in network.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return network

    return new_network


def build(
    name: str,
    model: nn.Module,
    kind: str,
    options: dict | None = None,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    meta_start: int = 0,
) -> tuple[torch.optim.Optimizer, Method]:
    dtype = next(model.parameters()).dtype
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    method = build_method(
        name,
        model=model,
        optimizer=optimizer,
        meta_batches=meta_stream(kind, dtype, meta_start),
        class_counts=counts(),
        options={"epochs": 3, **(options or {})},
        soft_labels=fixed_soft_labels if name in LABEL_CORRECTION_METHODS else None,
        new_network=new_network_like(model),
        new_optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum),
        training_set=TinyTrainingSet.of(kind, dtype),
    )
    return optimizer, method


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")
