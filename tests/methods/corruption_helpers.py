"""What the GLC and S-Model tests share: a fixed sample pass, the tiny Fashion-MNIST
runs of the training loop, and their comparison."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train.config import load_config

TIMING = ("epoch_time", "wall_time")


class FixedPass:
    """A :class:`~mwnet.methods.SamplePass` over fixed tensors, as the loop's would run it:
    eval mode, no gradient, float64 on the CPU, the model's mode restored."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __call__(self, model: nn.Module, reduce) -> torch.Tensor:
        was = model.training
        model.eval()
        with torch.no_grad():
            out = reduce(model(self.x), self.labels).to(torch.float64).cpu()
        model.train(was)
        return out


def write_fmnist(root: Path) -> Path:
    """The tiny fake Fashion-MNIST of tests/train/fake_data.py, 20 images per class."""
    path = Path(__file__).resolve().parent.parent / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_idx(root, per_class=20)


def tiny_config(root: Path, out: Path, method: str, *extra: str):
    """100 noisy training samples, 20 trusted, an MLP; 2 configured epochs whose learning
    rate drops tenfold after the first."""
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.download=false",
            "data.subset=100",
            "data.meta_per_class=2",
            "data.batch_size=25",
            "data.meta_batch_size=10",
            "data.augment=false",
            "data.noise=uniform",
            "data.noise_rate=0.4",
            "model.name=mlp",
            "model.options.hidden=[8]",
            "optim.lr=0.1",
            "optim.epochs=2",
            "optim.schedule=multistep",
            "optim.milestones=[1]",
            "optim.gamma=0.1",
            f"method.name={method}",
            "threads=1",
            "device=cpu",
            f"out_dir={out}",
            *extra,
        ],
    )


def tiny_compare_args(root: Path, out: Path, methods: str, *extra: str) -> list[str]:
    """``mwnet compare`` of ``methods`` (a comma list) on the tiny uniform-noise Fashion-MNIST
    of :func:`write_fmnist`, one job, no montage; ``extra`` overrides come last."""
    return [
        "compare",
        "--jobs",
        "1",
        "--top",
        "0",
        "--methods",
        methods,
        f"data.root={root}",
        "data.download=false",
        "data.subset=100",
        "data.meta_per_class=2",
        "data.batch_size=25",
        "data.meta_batch_size=10",
        "data.noise=uniform",
        "data.noise_rate=0.4",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        *extra,
    ]


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_end(a_dir: Path, b_dir: Path) -> dict:
    """Two runs ended in bit-identical metrics, model, optimizer and method state; the
    first run's checkpoint."""
    assert metrics(a_dir) == metrics(b_dir)
    a, b = load_checkpoint(a_dir / "checkpoint.pt"), load_checkpoint(b_dir / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    _assert_equal(a["optimizer"]["state"], b["optimizer"]["state"])
    _assert_equal(a["method"], b["method"])
    assert a["schedule"] == b["schedule"]
    return a


def _assert_equal(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b
