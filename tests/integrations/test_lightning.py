"""MetaWeighting trains a LightningModule exactly as mwnet's own method trains the same
model, resumes from a Lightning checkpoint exactly, steps learning-rate schedules where
Lightning's automatic optimisation steps them, and refuses what it would silently ignore.

The reference throughout is :class:`mwnet.methods.MetaWeightNet` stepped in a plain loop
(tests/integrations/lightning_workers.py ``reference``); its own correctness is what
tests/core and tests/methods check. What these tests add is that Lightning changes
nothing: the same operations in the same order, so equality is bitwise.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch
from reliability import Row, covers, covers_each
from rounding import relative_sum_bound

pytestmark = [
    pytest.mark.filterwarnings("ignore:You defined a `validation_step`"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]


@pytest.fixture(scope="module")
def lw():
    """The Lightning helpers; the whole module skips without Lightning (an extra)."""
    pytest.importorskip("lightning")
    import lightning_workers

    return lightning_workers


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_equal_states(ours: dict, ref: dict, what: str) -> None:
    assert ours.keys() == ref.keys(), what
    for name in ref:
        assert torch.equal(ours[name], ref[name]), f"{what}.{name} differs"


def _same_states(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)


CASES = {
    "mwnet-fast-sum": {},
    "cmwnet-reverse-mean-every-2nd-step": {
        "class_aware": True,
        "hypergrad": "reverse",
        "normalize": "mean",
        "meta_interval": 2,
    },
    "mwnet-momentum-virtual-step-sum-detached": {
        "virtual_step": "optimizer",
        "normalize": "sum-detached",
    },
}
BATCH, META_BATCH = 12, 8
"""36 training samples: 3 steps an epoch; 32 trusted samples: 4 trusted batches a pass, so
the trusted stream is mid-pass whenever an epoch ends."""


@pytest.mark.parametrize("name", CASES)
def test_a_lightning_fit_is_mwnets_own_training_bit_for_bit(lw, name):
    """Two epochs under a Trainer with MetaWeighting end with the model, the weighting net
    and every step's loss bit for bit those of MetaWeightNet stepped in a loop: the
    module's forward, its optimizer (through Lightning's wrapper and closure) and the
    trusted batches (through the strategy's transfer) add no arithmetic."""
    data = lw.Data.make(n=36, n_meta=32)
    options = CASES[name]
    ours = lw.fit(data, BATCH, META_BATCH, epochs=2, **options)
    ref = lw.reference(data, BATCH, META_BATCH, epochs=2, **options)
    _assert_equal_states(ours["model"], ref["model"], "model")
    _assert_equal_states(ours["weight_net"], ref["weight_net"], "weight_net")
    assert torch.equal(ours["loss"], ref["loss"])
    # bitwise equality means something here: the same data with the samples of every
    # batch reordered (the same step in exact arithmetic) already lands elsewhere
    reordered = lw.reference(data, BATCH, META_BATCH, epochs=2, order_seed=1, **options)
    assert not _same_states(reordered["model"], ref["model"])


def test_a_trusted_stream_restarted_every_epoch_is_caught(lw):
    """The planted bug a CombinedLoader would bring: the trusted batches start over with
    every training epoch instead of cycling on. The comparison above sees it."""
    from mwnet.integrations.lightning import MetaWeighting

    class RestartsEachEpoch(MetaWeighting):
        def on_train_epoch_start(self, trainer, pl_module):
            super().on_train_epoch_start(trainer, pl_module)
            self._stream.load_state_dict({"passes": 0, "drawn": 0})

    data = lw.Data.make(n=36, n_meta=32)
    wrong = lw.fit(data, BATCH, META_BATCH, epochs=2, callback_class=RestartsEachEpoch)
    ref = lw.reference(data, BATCH, META_BATCH, epochs=2)
    assert torch.equal(wrong["loss"][:3], ref["loss"][:3])  # the same through epoch 1 ...
    assert not _same_states(wrong["model"], ref["model"])  # ... then another trusted batch


def _smoothed(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, labels, reduction="none", label_smoothing=0.3)


def test_the_modules_own_per_sample_loss_is_the_training_loss(lw):
    """A module's ``per_sample_loss`` is what the step weights (MetaWeightNet with that
    ``loss_fn``, bit for bit); a ``loss_fn`` given to MetaWeighting comes before it."""
    from mwnet.integrations.lightning import MetaWeighting

    class Smoothed(lw.LitMlp):
        def per_sample_loss(self, output, labels):
            return _smoothed(output, labels)

    data = lw.Data.make(n=36, n_meta=32)
    train, trusted = data.loaders(BATCH, META_BATCH)
    runs = {}
    for name, loss_fn in (("own", None), ("given", torch.nn.CrossEntropyLoss(reduction="none"))):
        torch.manual_seed(0)
        model = Smoothed().double()  # the reference's initial model, drawn alike
        callback = MetaWeighting(trusted, weight_net=lw.weight_net(False), loss_fn=loss_fn)
        lw.trainer(max_epochs=1, callbacks=[callback]).fit(model, train)
        runs[name] = lw.state(model)
    own = lw.reference(data, BATCH, META_BATCH, epochs=1, loss_fn=_smoothed)
    plain = lw.reference(data, BATCH, META_BATCH, epochs=1)
    _assert_equal_states(runs["own"], own["model"], "model")
    _assert_equal_states(runs["given"], plain["model"], "model")
    assert not _same_states(own["model"], plain["model"])


def _resumable_fit(lw, tmp, epochs, callback, model, ckpt_path=None):
    import lightning.pytorch as pl

    data = lw.Data.make(n=36, n_meta=32)
    train, _ = data.loaders(BATCH, META_BATCH)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp, every_n_epochs=1, save_top_k=-1)
    run = lw.trainer(max_epochs=epochs, callbacks=[callback, saver], enable_checkpointing=True)
    run.fit(model, train, ckpt_path=ckpt_path)
    return run


def _fresh(lw, cls=None):
    """A module and a callback that start elsewhere than the saved run (other seeds), so
    only what the checkpoint restores can make the resumed run agree."""
    from mwnet import WeightNet
    from mwnet.integrations.lightning import MetaWeighting

    data = lw.Data.make(n=36, n_meta=32)
    _, trusted = data.loaders(BATCH, META_BATCH)
    model = lw.initial_model(seed=5, schedulers=("step",))
    torch.manual_seed(99)
    net = WeightNet().double()
    return model, net, (cls or MetaWeighting)(trusted, weight_net=net)


def _outcome(model, net, callback) -> dict:
    optimizer = callback.method.reweighter.weight_optimizer.state_dict()["state"]
    return {
        "model": model.state_dict(),
        "weight_net": net.state_dict(),
        "adam": {f"{i}.{k}": v for i, s in optimizer.items() for k, v in s.items()},
    }


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # each run saves apart
@covers(
    "state damage",
    "resume a Lightning run with MetaWeighting from its checkpoint",
    "the weighting net, its Adam state, the step count and the trusted loader's position "
    "come back: the run ends bit for bit where the uninterrupted one ends",
)
def test_resuming_from_a_lightning_checkpoint_continues_identically(lw, tmp_path):
    from mwnet.integrations.lightning import MetaWeighting

    _, trusted = lw.Data.make(n=36, n_meta=32).loaders(BATCH, META_BATCH)
    model = lw.initial_model(seed=0, schedulers=("step",))
    net = lw.weight_net(False)
    callback = MetaWeighting(trusted, weight_net=net)
    whole = _resumable_fit(lw, tmp_path / "whole", 3, callback, model)
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    # global_step counts the meta steps: the module's optimizer steps through Lightning
    assert names == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "epoch=2-step=9.ckpt"]
    assert whole.global_step == 9  # also after fit, with the module back in automatic mode
    expected = _outcome(model, net, callback)
    lrs = model.lrs
    saved = tmp_path / "whole" / "epoch=0-step=3.ckpt"
    checkpoint = torch.load(saved, weights_only=False)
    # the module's own checkpoint keys are untouched: the net lives in the callback's entry
    assert sorted(checkpoint["state_dict"]) == sorted(model.state_dict())
    assert checkpoint["callbacks"]["MetaWeighting"]["trusted"] == {"passes": 0, "drawn": 3}

    model, net, callback = _fresh(lw)
    resumed = _resumable_fit(lw, tmp_path / "resumed", 3, callback, model, ckpt_path=saved)
    assert resumed.global_step == 9
    got = _outcome(model, net, callback)
    for part in expected:
        _assert_equal_states(got[part], expected[part], part)
    assert model.lrs == lrs[3:]  # the scheduler came back too

    # planted bugs: a resume that forgets the trusted position, or the weighting net
    class ForgetsPosition(MetaWeighting):
        def load_state_dict(self, state_dict):
            super().load_state_dict({**state_dict, "trusted": {"passes": 0, "drawn": 0}})

    class ForgetsWeightNet(MetaWeighting):
        def load_state_dict(self, state_dict):
            method = dict(state_dict["method"], weight_net=self.options["weight_net"].state_dict())
            super().load_state_dict({**state_dict, "method": method})

    for bug in (ForgetsPosition, ForgetsWeightNet):
        model, net, callback = _fresh(lw, bug)
        _resumable_fit(lw, tmp_path / bug.__name__, 3, callback, model, ckpt_path=saved)
        assert callback.method.steps_done == 9  # the rest of the state did come back
        assert not _same_states(model.state_dict(), expected["model"]), bug.__name__


def _expected_lrs(epochs: int, batches: int) -> list[float]:
    """The schedule of ``LitMlp(schedulers=("step", "epoch", "plateau"))`` by its rules,
    written out: x0.5 after every 2nd batch of an epoch, x0.1 after each epoch, and x0.2
    after each epoch from the second on (the monitored metric never improves on the
    first epoch's, patience 0)."""
    lr, out = 0.5, []
    for epoch in range(epochs):
        for batch in range(1, batches + 1):
            out.append(lr)
            if batch % 2 == 0:
                lr *= 0.5
        lr *= 0.1
        if epoch >= 1:
            lr *= 0.2
    return out


def test_schedulers_step_where_automatic_optimisation_steps_them(lw):
    """A per-step scheduler with frequency 2, a per-epoch one and a ReduceLROnPlateau on a
    validation metric give the same learning rate at the start of every step with
    MetaWeighting as under Lightning's automatic optimisation, and as their rules say."""
    from mwnet.integrations.lightning import MetaWeighting

    data = lw.Data.make(n=48, n_meta=32)
    train, trusted = data.loaders(BATCH, META_BATCH)
    val, _ = data.loaders(BATCH, META_BATCH)
    runs = {}
    for name, callbacks in (("automatic", []), ("mwnet", [MetaWeighting(trusted)])):
        model = lw.initial_model(schedulers=("step", "epoch", "plateau"))
        lw.trainer(max_epochs=3, callbacks=callbacks).fit(model, train, val)
        runs[name] = model.lrs
    expected = _expected_lrs(epochs=3, batches=4)
    assert runs["mwnet"] == runs["automatic"]
    # each rate is a product of at most 10 factors: within 2·γ_10 of the written-out one
    assert runs["mwnet"] == pytest.approx(expected, rel=relative_sum_bound(10, torch.float64))


def test_the_module_is_given_back_after_fit_even_a_failed_one(lw):
    """During fit MetaWeighting owns the training step; afterwards the module trains
    automatically with its own training_step again, also after a step that raised."""
    from mwnet.integrations.lightning import MetaWeighting

    data = lw.Data.make(n=24, n_meta=16)
    train, trusted = data.loaders(BATCH, META_BATCH)
    model = lw.initial_model()
    lw.trainer(max_epochs=1, callbacks=[MetaWeighting(trusted)]).fit(model, train)
    assert model.automatic_optimization and "training_step" not in vars(model)

    bad = data.x.clone()
    bad[13] = float("nan")  # the second batch: mwnet's checks stop the step
    poisoned = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(bad, data.y), batch_size=BATCH
    )
    with pytest.raises(FloatingPointError, match="step 1"):
        lw.trainer(max_epochs=1, callbacks=[MetaWeighting(trusted)]).fit(model, poisoned)
    assert model.automatic_optimization and "training_step" not in vars(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lw.trainer(max_steps=1).fit(model, train)  # its own training_step trains it again
    assert not _same_states(model.state_dict(), before)


def test_a_second_fit_with_the_same_callback_goes_on_from_the_first(lw):
    """The weighting net MetaWeighting built for the first fit, its Adam state, the step
    count and the trusted position carry over to a second fit (a new Trainer builds the
    method anew): the second fit starts from the first one's end."""
    from mwnet.integrations.lightning import MetaWeighting

    data = lw.Data.make(n=36, n_meta=32)
    train, trusted = data.loaders(BATCH, META_BATCH)
    model = lw.initial_model()
    callback = MetaWeighting(trusted)  # builds its own net as each fit starts
    lw.trainer(max_epochs=1, callbacks=[callback]).fit(model, train)
    after_first = copy.deepcopy(callback.state_dict())  # Adam updates its tensors in place
    first_net = lw.state(callback.weight_net)
    seen = {}

    class AtStart(lw.pl.Callback):  # runs after MetaWeighting's on_fit_start
        def on_fit_start(self, trainer, pl_module):
            seen["net"] = lw.state(callback.weight_net)
            seen["state"] = copy.deepcopy(callback.state_dict())

    lw.trainer(max_epochs=1, callbacks=[callback, AtStart()]).fit(model, train)
    _assert_equal_states(seen["net"], first_net, "weight_net")
    assert seen["state"]["trusted"] == after_first["trusted"] == {"passes": 0, "drawn": 3}
    adam = seen["state"]["method"]["weight_optimizer"]["state"]
    assert int(adam[0]["step"]) == 3 and seen["state"]["method"]["steps_done"] == 3
    assert callback.method.steps_done == 6


def test_a_step_returns_the_weights_to_on_train_batch_end_and_logs(lw):
    """What the step hands on: the per-sample losses and weights of the batch (for a
    record of label issues), and the logged loss, meta loss and mean weight."""
    from mwnet.integrations.lightning import MetaWeighting

    data = lw.Data.make(n=24, n_meta=16)
    train, trusted = data.loaders(BATCH, META_BATCH)
    record = lw.Record()
    outputs = []

    class Keep(lw.pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, out, batch, batch_idx):
            outputs.append((out, dict(trainer.callback_metrics)))

    callback = MetaWeighting(trusted, meta_interval=2)
    lw.trainer(max_epochs=1, callbacks=[callback, record, Keep()]).fit(lw.initial_model(), train)
    (first, logged), (second, _) = outputs
    net = callback.method.reweighter
    assert first["losses"].shape == first["weights"].shape == (BATCH,)
    assert torch.equal(logged["mwnet/loss"], first["loss"])
    assert torch.equal(logged["mwnet/meta_loss"], first["meta_loss"])
    assert logged["mwnet/weight"] == pytest.approx(first["weights"].mean().item(), rel=1e-15)
    assert second["meta_loss"] is None  # meta_interval=2: no weighting-net update
    with torch.no_grad():  # the second step's weights are the updated net's, on its losses
        assert torch.equal(second["weights"], net.weights(second["losses"]))


TWO_OPTIMIZERS, BF16, CLIP, ACCUMULATE, PLATEAU_STEP = range(5)
FAULTS = [
    Row(
        "bad input",
        "Lightning Trainer with gradient_clip_val and MetaWeighting",
        "ValueError: gradient_clip_val=1.0: Lightning clips only under automatic "
        "optimisation; ... call self.clip_gradients(...) in on_before_optimizer_step",
        (CLIP, "gradient_clip_val=1.0: Lightning clips only under automatic"),
    ),
    Row(
        "bad input",
        "Lightning Trainer with accumulate_grad_batches=2 and MetaWeighting",
        "ValueError: accumulate_grad_batches=2: each MetaWeighting step updates the model on "
        "its own batch",
        (ACCUMULATE, "accumulate_grad_batches=2: each MetaWeighting step"),
    ),
    Row(
        "bad input",
        "Lightning Trainer with precision bf16-mixed and MetaWeighting",
        "ValueError: MetaWeighting supports precision 32-true or 64-true, got 'bf16-mixed'",
        (BF16, "supports precision 32-true or 64-true, got 'bf16-mixed'"),
    ),
    Row(
        "bad input",
        "LightningModule whose configure_optimizers returns two optimizers, with MetaWeighting",
        "ValueError: configure_optimizers returned 2 optimizers; MetaWeighting trains the "
        "module with exactly one",
        (TWO_OPTIMIZERS, "returned 2 optimizers"),
    ),
    Row(
        "bad input",
        "ReduceLROnPlateau with interval step, with MetaWeighting",
        "ValueError: a ReduceLROnPlateau with interval='step': MetaWeighting steps plateau "
        "schedulers at the end of an epoch only",
        (PLATEAU_STEP, "ReduceLROnPlateau with interval='step'"),
    ),
]


@covers_each(FAULTS)
def test_trainer_settings_the_step_would_ignore_are_refused_before_the_first_batch(lw, row):
    from mwnet.integrations.lightning import MetaWeighting

    fault, message = row.args
    data = lw.Data.make(n=24, n_meta=16)
    train, trusted = data.loaders(BATCH, META_BATCH)
    model = lw.initial_model()
    settings = {
        CLIP: {"gradient_clip_val": 1.0},
        ACCUMULATE: {"accumulate_grad_batches": 2},
        BF16: {"precision": "bf16-mixed"},
    }.get(fault, {})
    if fault == TWO_OPTIMIZERS:  # Lightning itself takes two only under manual optimisation
        model.automatic_optimization = False
        sgd = torch.optim.SGD
        model.configure_optimizers = lambda: [sgd([model.head.bias]), sgd([model.head.weight])]
    if fault == PLATEAU_STEP:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        config = {"scheduler": plateau, "monitor": "val_metric", "interval": "step"}
        model.configure_optimizers = lambda: {"optimizer": optimizer, "lr_scheduler": config}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    automatic = model.automatic_optimization
    run = lw.trainer(max_epochs=1, callbacks=[MetaWeighting(trusted)], **settings)
    with pytest.raises(ValueError, match=re.escape(message)):
        run.fit(model, train)
    _assert_equal_states(model.state_dict(), before, "model")  # no step was taken
    assert model.automatic_optimization == automatic and "training_step" not in vars(model)


@covers_each(
    [
        Row(
            "bad input",
            "MetaWeighting(trusted, hypergrads='fast'): a misspelt option",
            "TypeError: MetaWeighting got unknown option(s) ['hypergrads']; the options of "
            "mwnet.methods.MetaWeightNet are [...]",
            ("option",),
        ),
        Row(
            "bad input",
            "MetaWeighting on batches that are dicts, without unpack=",
            "TypeError: MetaWeighting reads a batch as (inputs, labels, ...), got dict; pass "
            "unpack=lambda batch: (inputs, labels) to read yours",
            ("batch",),
        ),
        Row(
            "bad input",
            "MetaWeighting under DDP with a trusted loader whose batch_sampler it cannot split",
            "ValueError: under 2 processes every process needs its own share of the trusted "
            "batches ... give the trusted DataLoader a torch.utils.data.DistributedSampler",
            ("shard",),
        ),
    ]
)
def test_arguments_it_cannot_use_are_named(lw, row):
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from mwnet.integrations.lightning import MetaWeighting, inputs_and_labels
    from mwnet.integrations.lightning.trusted import shard_for_ranks

    (what,) = row.args
    if what == "option":
        with pytest.raises(TypeError, match=r"unknown option\(s\) \['hypergrads'\].*'hypergrad'"):
            MetaWeighting([], hypergrads="fast")
    elif what == "batch":
        with pytest.raises(TypeError, match="got dict; pass unpack="):
            inputs_and_labels({"x": torch.zeros(2, 3), "y": torch.zeros(2)})
    else:
        batches = BatchSampler(SequentialSampler(range(8)), batch_size=4, drop_last=False)
        loader = DataLoader(list(range(8)), batch_sampler=batches)
        with pytest.raises(ValueError, match=r"give the trusted DataLoader a .*DistributedSampler"):
            shard_for_ranks(loader, rank=0, world=2)


def test_the_trusted_stream_resumes_mid_pass_and_reshuffles_by_pass(lw):
    """The position is (pass, drawn): a restored stream draws what the uninterrupted one
    draws next, and each pass is opened with set_epoch(pass), so a DistributedSampler's
    order is the same in both."""
    from torch.utils.data import DataLoader, DistributedSampler

    from mwnet.integrations.lightning import TrustedBatches

    dataset = [(torch.tensor([float(i)]), torch.tensor(i)) for i in range(10)]
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)  # 3 batches a pass
    stream = TrustedBatches(loader)
    whole = [next(stream)[1].tolist() for _ in range(8)]
    # what DistributedSampler's documented rule gives rank 1 in pass p: a permutation
    # seeded with seed + p, every other index from 1 on, in batches of 2
    expected = []
    for p in range(3):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(3 + p))[1::2]
        expected += [order[i : i + 2].tolist() for i in range(0, 5, 2)]
    assert whole == expected[:8]
    for cut in (2, 3, 4):  # mid-pass, at a pass's end, at the start of the next
        first = TrustedBatches(loader)
        head = [next(first)[1].tolist() for _ in range(cut)]
        second = TrustedBatches(loader)
        second.load_state_dict(first.state_dict())
        assert head + [next(second)[1].tolist() for _ in range(8 - cut)] == whole


@covers(
    "installation",
    "pip install mwnet without the lightning extra, then import mwnet.integrations.lightning",
    "ImportError: mwnet.integrations.lightning needs PyTorch Lightning, which is not "
    "installed: pip install 'mwnet[lightning]'",
)
def test_without_lightning_the_integration_names_the_extra_and_mwnet_still_imports():
    code = (
        "import sys\nsys.modules['lightning'] = None\n"
        "import mwnet, mwnet.methods\n"
        "try:\n    import mwnet.integrations.lightning\n"
        "except ImportError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "mwnet.integrations.lightning needs PyTorch Lightning, which is not installed: pip "
        "install 'mwnet[lightning]'"
    )
