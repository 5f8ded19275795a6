"""Meta Label Correction (Zheng, Awadallah & Dumais, AAAI 2021): a small network rewrites
each noisy label into a soft one, the model trains on the rewritten labels, and the network
learns by meta-learning what makes one step on them good for a trusted batch."""

from __future__ import annotations

import typing
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mwnet.core.checks import (
    check_batch,
    check_class_labels,
    check_labels,
    check_logits,
    check_same_samples,
    gradient_norms,
    inputs_named,
    integer_labels,
    raise_if_not_finite,
    step_guard,
)
from mwnet.core.data_parallel import sum_backward
from mwnet.core.hypergrad import HYPERGRADIENTS, MetaProblem
from mwnet.core.parameters import virtual_parameters
from mwnet.core.reducer import GradientReducer
from mwnet.core.snapshot import ForwardSnapshot
from mwnet.core.virtual_step import (
    VIRTUAL_STEP_KINDS,
    VirtualStepKind,
    affine_step,
    check_virtual_step,
)
from mwnet.methods.base import Method, StepOutput, next_meta_batch
from mwnet.methods.hypergrad_mode import Hypergradient, hypergradient
from mwnet.methods.penultimate import PenultimateFeatures, feature_width

ExactHypergrad = Literal["fast", "reverse"]
EXACT_MODES: tuple[str, ...] = typing.get_args(ExactHypergrad)
ADAM_EPS = 1e-8
"""The authors' ``--opt_eps``, the correction net's Adam epsilon."""


@dataclass
class MlcOptions:
    """``method.mlc.*``; the defaults are the authors' CIFAR settings."""

    hypergrad: ExactHypergrad = "fast"
    """fast (forward mode) | reverse (second order, as the authors): the same, exact meta
    gradient of the correction net"""
    virtual_step: VirtualStepKind = "optimizer"
    """optimizer (the authors: one step of the run's SGD, momentum and weight decay
    included) | sgd (plain SGD at the current learning rate)"""
    hidden: int = 128
    """width of the correction net's two hidden layers"""
    embedding: int = 128
    """size of the noisy label's embedding (the authors' --cls_dim: 128 in their scripts)"""
    lr: float = 3e-4
    """the correction net's Adam learning rate (the authors: 3e-4 on CIFAR, 3e-3 on
    Clothing1M)"""
    decay: float = 0.0
    """the correction net's weight decay"""
    amsgrad: bool = True
    """Adam with AMSGrad, as the authors"""
    skip: bool = False
    """mix each corrected label with the one-hot noisy label, a·onehot(y) + (1 - a)·q, by a
    gate a the net outputs per sample (the authors' --skip, their Clothing1M setting)"""
    trusted_half: bool = True
    """half of each trusted batch (its even positions) also trains the model on its own
    labels, the other half gives the meta loss (the authors' default, hmlc_K_mix); false:
    the whole trusted batch gives the meta loss (hmlc_K)"""

    def problem(self, prefix: str = "") -> str | None:
        """What is wrong with these values (keys named with ``prefix``), or None."""
        checks = [
            (self.hypergrad in EXACT_MODES, f"hypergrad must be one of {', '.join(EXACT_MODES)}"),
            (
                self.virtual_step in VIRTUAL_STEP_KINDS,
                f"virtual_step must be one of {', '.join(VIRTUAL_STEP_KINDS)}",
            ),
            (self.hidden >= 1, "hidden must be >= 1"),
            (self.embedding >= 1, "embedding must be >= 1"),
            (self.lr >= 0, "lr must be >= 0"),
            (self.decay >= 0, "decay must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                return prefix + message
        return None

    def hypergradient(self, prefix: str = "") -> Hypergradient:
        """The configured hypergradient mode (the config asks it, e.g. about SyncBatchNorm)."""
        return hypergradient(self.hypergrad, prefix=prefix)


class LabelCorrectionNet(nn.Module):
    """The authors' label correction network (their ``MetaNet``): a sample's representation
    and an embedding of its noisy label, through two tanh layers, to a distribution over
    the classes.

    ``forward(features, labels)`` returns the corrected labels, shape (n, classes), rows
    summing to one. Initialised as theirs (Xavier-uniform embedding, Xavier-normal layers,
    zero biases), from ``seed`` alone: building it moves no global random state.
    """

    def __init__(
        self,
        features: int,
        classes: int,
        *,
        hidden: int = 128,
        embedding: int = 128,
        skip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.classes, self.skip = classes, skip
        with torch.random.fork_rng(devices=[]):  # the layers' own initialisation draws
            self.embedding = nn.Embedding(classes, embedding)
            self.net = nn.Sequential(
                nn.Linear(features + embedding, hidden),
                nn.Tanh(),
                nn.Linear(hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, classes + int(skip)),
            )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.embedding.weight, generator=g)
            for layer in (self.net[0], self.net[2], self.net[4]):
                nn.init.xavier_normal_(layer.weight, generator=g)
                layer.bias.zero_()

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.net(torch.cat([features, self.embedding(labels)], dim=-1))
        if not self.skip:
            return torch.softmax(logits, dim=-1)
        gate = torch.sigmoid(logits[:, self.classes :])
        probs = torch.softmax(logits[:, : self.classes], dim=-1)
        return (1 - gate) * probs + gate * F.one_hot(labels, self.classes).to(probs.dtype)


@dataclass(frozen=True)
class _Counts:
    """The global sizes one step normalises by, and where this rank's trusted shard sits."""

    training: int
    evaluation: int
    trusted_training: int
    offset: int


class MetaLabelCorrection(Method):
    """Meta Label Correction (MLC; Zheng, Awadallah & Dumais, AAAI 2021).

    A label correction net (:class:`LabelCorrectionNet`, parameters α) maps a training
    sample's representation h (the input of the model's last ``nn.Linear``, detached:
    :class:`~mwnet.methods.penultimate.PenultimateFeatures`) and its noisy label y to a
    soft label q = g(h, y; α). Each step, on a training batch of n and a trusted batch
    whose odd positions E give the meta loss and whose even positions C train beside it:

        J(θ; α) = [Σ_i Σ_k −q_ik log p_k(x_i; θ) + Σ_{j∈C} CE(x_j, y_j)] / (n + |C|),
        θ̂(α)   = one virtual step of the run's optimizer on J from its current state,
        α       ← Adam step on ∂/∂α mean_{j∈E} CE(f(x_j; θ̂(α)), y_j),
        θ       ← the run's optimizer step on ∇_θ J(θ; α) with the labels of the α the
                  virtual step used (the authors reuse that gradient).

    J is linear in the n·K corrected labels, so the core's meta step
    (:class:`~mwnet.core.hypergrad.MetaProblem`) computes the exact meta gradient with the
    labels as its coefficients and −log p_ik as its terms: ``hypergrad="reverse"`` through
    the virtual step as the authors, ``"fast"`` by one forward-mode product, the same
    number. The virtual and meta passes run on copies of the buffers: BatchNorm's running
    statistics move once per step, in the training batch's forward. The trusted half's
    forward uses batch statistics too, on copies.

    Under data parallelism (``reducer``) each rank holds shards of both batches; the
    split of the trusted batch is by *global* position, the virtual step's gradient, the
    meta loss and the correction net's gradient are sums over ranks (the core's pattern
    for the weighting net), and the real gradient that of the global objective: W ranks
    compute what one process computes.

    The correction net and its optimizer are this method's state (:meth:`state_dict`),
    listed in :meth:`networks`; evaluation and the saved model are the loop's model.

    Departures from the authors' code (github.com/microsoft/MLC, ``mlc.py``, ``main.py``):

    * their k-step look-ahead (``--gradient_steps k``) is implemented for k = 1 only, the
      default of their scripts (their Clothing1M command uses k = 5). For k = 1 their meta
      gradient is the exact one computed here (the proxy −⟨∇_θ J, s·∇_θ̂ L_meta⟩,
      s the step's gradient multiplier, backpropagated to α); for k > 1 they add the
      previous steps' gradients discounted by a factor that takes the training loss's
      Hessian as the identity, an approximation not offered here;
    * the trusted batch is split by position parity (odd positions: meta loss), not into
      its first and second halves, so that the split is the same on any number of ranks;
      the sizes are theirs (⌊m/2⌋ for the meta loss). Set ``data.meta_batch_size`` to the
      training batch size to match their trusted batches;
    * their four forwards per step (the meta batch at θ, the training batch, the trusted
      half, the meta batch at θ̂) all move BatchNorm's running statistics; here only the
      training batch's does;
    * their virtual step's learning rate comes from ``MultiStepLR.get_lr()``, which in the
      epoch right after each milestone returns the rate in use times γ (a tenth); here it is the
      rate in use. Their virtual step reads the optimizer's defaults; here each parameter's
      group. Without a momentum buffer (the first step) the virtual step is torch's first
      SGD step, as the real one (theirs scales the gradient by 1 − dampening there; both
      use dampening 0);
    * their options ``--sparsemax`` and ``--tie`` (sparsemax output, output layer tied to
      the label embedding) are not offered; there is no warm-up in their code
      (``method.warmup_epochs`` gives one of plain cross-entropy).

    Args:
        model: the classifier; its last ``nn.Linear`` must be its classifier (the
            representation is that layer's input).
        optimizer: the model's optimizer (torch.optim.SGD for ``virtual_step="optimizer"``).
        meta_batches: endless iterator of trusted (x, y) batches; one drawn per step.
        classes: the number of classes.
        options: :class:`MlcOptions`.
        seed: the correction net's initialisation is drawn from it.
        features: the representation's width; None reads it from the last ``nn.Linear``.
        checks: validate batches and labels, stop on NaN/Inf before updating anything.
        reducer: data parallelism (see above); None in one process.
    """

    name = "mlc"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        classes: int,
        *,
        options: MlcOptions | None = None,
        seed: int = 0,
        features: int | None = None,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__()
        o = options if options is not None else MlcOptions()
        message = o.problem("method.mlc.")
        if message is not None:
            raise ValueError(message)
        check_virtual_step(o.virtual_step, optimizer)
        self.names, self.params, self._group_index = virtual_parameters(model, optimizer)
        self.model, self.optimizer, self.meta_batches = model, optimizer, meta_batches
        self.classes, self.options = classes, o
        self.checks, self.reducer = checks, reducer
        self.representation = PenultimateFeatures(model)
        width = feature_width(model) if features is None else features
        param = next(model.parameters())
        self.corrector = LabelCorrectionNet(
            width,
            classes,
            hidden=o.hidden,
            embedding=o.embedding,
            skip=o.skip,
            seed=zlib.crc32(f"mlc/{seed}".encode()),
        ).to(device=param.device, dtype=_float_dtype(model))
        self.corrector_optimizer = torch.optim.Adam(
            self.corrector.parameters(),
            lr=o.lr,
            weight_decay=o.decay,
            amsgrad=o.amsgrad,
            eps=ADAM_EPS,
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"corrector": self.corrector}

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        with step_guard(
            self.model,
            modules=[self.corrector],
            optimizers=[self.corrector_optimizer],
            enabled=self.checks,
        ):
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_meta, y_meta = next_meta_batch(self.meta_batches)
        y, y_meta = integer_labels(y), integer_labels(y_meta)
        self._check_batches(x, y, x_meta, y_meta)
        snapshot = ForwardSnapshot.capture(self.model, x.device)
        with inputs_named(x, "training"):
            logits, features = self.representation.with_output(x)  # the real forward
        problem, losses = self._problem(x, y, x_meta, y_meta, logits, features, snapshot)
        hyper, meta_loss = HYPERGRADIENTS[self.options.hypergrad](problem)
        if self.checks:
            raise_if_not_finite(
                self.steps_done,
                training_loss=losses.detach(),
                meta_loss=meta_loss,
                correction_net_gradient=torch.cat([g.reshape(-1) for g in hyper]),
            )
        self.corrector_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.corrector.parameters(), hyper, strict=True):
            p.grad = g
        # the real update: the labels the virtual step used, as constants
        objective = torch.dot(problem.coefficients.detach(), problem.losses)
        if problem.unweighted_mean is not None:
            objective = objective + problem.unweighted_mean
        if self.reducer is None:
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            loss = objective.detach()
        else:
            (loss,) = sum_backward(objective, self.optimizer, self.reducer)
        if self.checks:
            raise_if_not_finite(self.steps_done, model_gradient=gradient_norms(self.optimizer))
        self.corrector_optimizer.step()
        self.optimizer.step()
        self.steps_done += 1
        return StepOutput(loss=loss, losses=losses.detach(), weights=None, meta_loss=meta_loss)

    def meta_gradient(
        self, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor, y_meta: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """∂L_meta(θ̂(α))/∂α (in the order of the correction net's parameters) and the meta
        loss for one step on these batches, changing no state; :meth:`step` computes the
        same internally."""
        y, y_meta = integer_labels(y), integer_labels(y_meta)
        self._check_batches(x, y, x_meta, y_meta)
        snapshot = ForwardSnapshot.capture(self.model, x.device)
        with inputs_named(x, "training"):
            logits, features = self.representation.with_output(x, snapshot.buffer_copies())
        problem, _ = self._problem(x, y, x_meta, y_meta, logits, features, snapshot)
        return HYPERGRADIENTS[self.options.hypergrad](problem)

    @torch.no_grad()
    def corrected_labels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The corrected labels q of a batch, shape (n, classes), from the model's current
        representation (run in its own mode, on copies of its buffers) and the current
        correction net; changes no state."""
        y = integer_labels(y)
        if self.checks:
            check_batch(x, y, "training")
            check_class_labels(y, "training")
            check_labels(y, self.classes, "training")
        buffers = {k: b.clone() for k, b in self.model.named_buffers()}
        with inputs_named(x, "training"):
            _, features = self.representation.with_output(x, buffers)
        return self._correct(features, y)

    def _correct(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The correction net on the detached representation, in its own precision and
        outside autocast (as the core runs a weighting net): it is tiny, and its labels
        weigh the model's float32 log-probabilities."""
        features = self._checked_features(features).to(self.corrector.embedding.weight.dtype)
        with torch.autocast(features.device.type, enabled=False):
            return self.corrector(features, labels)

    def _check_batches(self, x, y, x_meta, y_meta) -> None:
        if not self.checks:
            return
        for xs, ys, which in ((x, y, "training"), (x_meta, y_meta, "meta")):
            check_batch(xs, ys, which)
            check_class_labels(ys, which)
            check_labels(ys, self.classes, which)
        check_same_samples(x, x_meta)

    def _checked_features(self, features: torch.Tensor) -> torch.Tensor:
        width = self.corrector.net[0].in_features - self.corrector.embedding.embedding_dim
        if features.shape[1] != width:
            raise ValueError(
                f"the model's representation (the input of its last nn.Linear) has "
                f"{features.shape[1]} features, but the correction net was built for {width}: "
                "the model's last nn.Linear in module order must be the classifier that runs "
                "last, or pass features= with the width"
            )
        return features.detach()

    def _counts(self, n: int, m: int, device: torch.device) -> _Counts:
        """The global batch sizes and this rank's offset in the trusted batch (one small
        all-reduce under data parallelism: every rank's shard sizes)."""
        if self.reducer is None:
            total, offset = m, 0
        else:
            r = self.reducer
            local = torch.zeros(1 + r.world_size, dtype=torch.int64, device=device)
            local[0], local[1 + r.rank] = n, m
            (summed,) = r.sum([local], "normaliser")
            sizes = summed.tolist()
            n, total, offset = sizes[0], sum(sizes[1:]), sum(sizes[1 : 1 + r.rank])
        evaluation = total // 2 if self.options.trusted_half else total
        return _Counts(n, evaluation, total - evaluation, offset)

    def _problem(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
        logits: Any,
        features: torch.Tensor,
        snapshot: ForwardSnapshot,
    ) -> tuple[MetaProblem, torch.Tensor]:
        """The meta step's problem (the corrected labels as coefficients of the terms
        −log p_ik) and the batch's plain cross-entropy losses."""
        if self.checks:
            check_logits(logits, y.shape[0], "training")
            check_labels(y, logits.shape[-1], "training")
            if logits.shape[-1] != self.classes:
                raise ValueError(
                    f"the model returns {logits.shape[-1]} classes, but the method was built "
                    f"for {self.classes}"
                )
        counts = self._counts(len(y), len(y_meta), x.device)
        evaluation, trusted = self._split(len(y_meta), counts.offset, x.device)
        terms = _terms(logits)
        losses = terms.gather(1, y[:, None]).squeeze(1)
        corrected = self._correct(features, y)
        normaliser = counts.training + counts.trusted_training
        coefficients = (corrected / normaliser).to(terms.dtype).reshape(-1)
        trusted_part = None
        if trusted is not None:
            out = functional_call(self.model, snapshot.buffer_copies(), (x_meta[trusted],))
            trusted_part = F.cross_entropy(out, y_meta[trusted], reduction="sum") / normaliser
        world = 1 if self.reducer is None else self.reducer.world_size
        x_eval, y_eval = x_meta[evaluation], y_meta[evaluation]

        def meta_loss_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            # the core divides by the world size: this rank's share of the global mean
            out = functional_call(self.model, {**theta, **snapshot.buffer_copies()}, (x_eval,))
            return F.cross_entropy(out, y_eval, reduction="sum") * (world / counts.evaluation)

        def losses_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            with snapshot.replaying_rng():  # the real forward's dropout masks
                out = functional_call(self.model, {**theta, **snapshot.buffer_copies()}, (x,))
            return _terms(out).reshape(-1)

        groups = self.optimizer.param_groups
        problem = MetaProblem(
            names=self.names,
            params=self.params,
            losses=terms.reshape(-1),
            coefficients=coefficients,
            step=affine_step(
                self.options.virtual_step,
                self.params,
                [groups[i] for i in self._group_index],
                self.optimizer,
            ),
            meta_loss_at=meta_loss_at,
            losses_at=losses_at,
            weight_params=list(self.corrector.parameters()),
            unweighted_mean=trusted_part,
            reducer=self.reducer,
            keep_graph=True,
        )
        return problem, losses

    def _split(
        self, m: int, offset: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions in this rank's trusted shard that give the meta loss, and those that
        train the model (None without ``trusted_half``): odd and even global positions."""
        if not self.options.trusted_half:
            return torch.arange(m, device=device), None
        odd = (torch.arange(m, device=device) + offset) % 2 == 1
        evaluation, trusted = odd.nonzero().flatten(), (~odd).nonzero().flatten()
        if len(evaluation) == 0 or len(trusted) == 0:
            raise ValueError(
                f"method.mlc.trusted_half splits each trusted batch into a half for the meta "
                f"loss and a half that trains the model, but this batch (or this rank's shard "
                f"of it) has {m} sample(s); raise data.meta_batch_size to at least 2 per rank, "
                "or set method.mlc.trusted_half=false"
            )
        return evaluation, trusted

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "corrector": self.corrector.state_dict(),
            "corrector_optimizer": self.corrector_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.corrector.load_state_dict(state["corrector"])
        self.corrector_optimizer.load_state_dict(state["corrector_optimizer"])


def _terms(logits: torch.Tensor) -> torch.Tensor:
    """−log p_ik, the terms the corrected labels weigh, in at least float32 (under autocast
    the logits may be half precision)."""
    return -torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The model's floating-point dtype, for a correction net that computes beside it."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
