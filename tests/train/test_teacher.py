"""The EMA teacher: the recursion, its own BatchNorm statistics, freezing, checkpoints."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mwnet.train.teacher import DEFAULT_EMA_DECAY, EmaTeacher

K = 3


def make_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K)).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 4, generator=g, dtype=dtype) * 2 + 1
    return x, torch.randint(0, K, (16,), generator=g)


def train_step(student, opt, teacher: EmaTeacher, step: int) -> None:
    """One CMW-Net-SL-like step: soft labels from the teacher, a student step, an update."""
    x, y = batch(step, next(student.parameters()).dtype)
    p = teacher.soft_labels(x)
    student.train()
    logits = student(x)
    loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits, p)
    opt.zero_grad()
    loss.backward()
    opt.step()
    teacher.update(student)


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in module.named_buffers()}


def test_one_update_by_hand():
    student = nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.fill_(1.0)
        student.bias.fill_(-2.0)
    teacher = EmaTeacher(student, decay=0.75)
    with torch.no_grad():
        student.weight.fill_(3.0)
        student.bias.fill_(2.0)
    teacher.update(student)
    # 0.75 * 1 + 0.25 * 3 and 0.75 * -2 + 0.25 * 2: the teacher keeps most of its past
    assert teacher.module.weight.tolist() == [[1.5, 1.5]]
    assert teacher.module.bias.tolist() == [-1.0]
    teacher.update(student)
    assert teacher.module.weight.tolist() == [[1.875, 1.875]]
    assert teacher.num_updates == 2


@pytest.mark.parametrize("decay", [DEFAULT_EMA_DECAY, 0.9, 0.0])
def test_ema_recursion_matches_reference(decay):
    student = make_net(dtype=torch.float64)
    teacher = EmaTeacher(student, decay=decay)
    assert teacher.decay == decay
    opt = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    ref = params(student)
    for step in range(4):
        train_step(student, opt, teacher, step)
        for name, p in student.named_parameters():
            ref[name] = decay * ref[name] + (1 - decay) * p.detach()
    got = params(teacher.module)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-12)
    # decay 0 is a plain copy of the student; otherwise the teacher trails it
    now = params(student)
    same = all(torch.equal(got[n], now[n]) for n in got)
    assert same == (decay == 0.0)


def test_buffers_not_averaged_but_moved_by_own_train_forward():
    student = make_net()
    teacher = EmaTeacher(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    start = buffers(teacher.module)

    # the student trains (its BatchNorm statistics move), the teacher only updates
    for step in range(3):
        x, y = batch(step)
        student.train()
        loss = F.cross_entropy(student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        teacher.update(student)
    assert not torch.equal(student[1].running_mean, start["1.running_mean"])
    after_updates = buffers(teacher.module)
    for name in start:
        assert torch.equal(after_updates[name], start[name]), name

    # the teacher's own train-mode forward moves them, from its own activations
    x, _ = batch(99)
    with torch.no_grad():
        h = teacher.module[0](x)
    momentum = teacher.module[1].momentum
    expected_mean = (1 - momentum) * start["1.running_mean"] + momentum * h.mean(0)
    expected_var = (1 - momentum) * start["1.running_var"] + momentum * h.var(0, unbiased=True)
    teacher.soft_labels(x)
    bn = teacher.module[1]
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert int(bn.num_batches_tracked) == 1
    # and a further update still leaves them alone
    teacher.update(student)
    torch.testing.assert_close(bn.running_mean, expected_mean)


def test_soft_labels_are_train_mode_probabilities():
    student = make_net()
    teacher = EmaTeacher(student)
    x, _ = batch(0)
    reference = copy.deepcopy(teacher.module).train()
    with torch.no_grad():
        want = F.softmax(reference(x), dim=1)
    got = teacher.soft_labels(x)
    assert got.shape == (16, K) and got.dtype == torch.float32
    torch.testing.assert_close(got.sum(1), torch.ones(16))
    torch.testing.assert_close(got, want)
    # batch statistics: a sample's soft label depends on the rest of its batch
    alone = teacher.soft_labels(x[:4])
    assert not torch.allclose(alone, got[:4])


def test_scores_are_eval_mode_cross_entropy_and_move_nothing():
    student = make_net()
    teacher = EmaTeacher(student)
    teacher.soft_labels(batch(5)[0])  # give the running statistics non-trivial values
    before = buffers(teacher.module)
    x, y = batch(1)
    reference = copy.deepcopy(teacher.module).eval()
    with torch.no_grad():
        want = F.cross_entropy(reference(x), y, reduction="none")
    got = teacher.scores(x, y)
    assert got.shape == (16,) and not got.requires_grad
    torch.testing.assert_close(got, want)
    # per-sample: independent of the rest of the batch
    torch.testing.assert_close(teacher.scores(x[:3], y[:3]), got[:3])
    after = buffers(teacher.module)
    for name in before:
        assert torch.equal(after[name], before[name]), name
    with pytest.raises(ValueError, match="one label per input, got 16 inputs"):
        teacher.scores(x, y[:5])


def test_freeze_keeps_parameters_fixed():
    student = make_net()
    teacher = EmaTeacher(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    train_step(student, opt, teacher, 0)
    teacher.freeze()
    assert teacher.frozen and teacher.decay == 1.0
    fixed = params(teacher.module)
    bn_before = teacher.module[1].running_mean.clone()
    for step in range(1, 4):
        train_step(student, opt, teacher, step)
    for name, value in params(teacher.module).items():
        assert torch.equal(value, fixed[name]), name
    assert teacher.num_updates == 4
    # as in the authors' code, BatchNorm statistics still follow the teacher's forwards
    assert not torch.equal(teacher.module[1].running_mean, bn_before)
    # and the frozen state survives a checkpoint
    restored = EmaTeacher(make_net(seed=5))
    restored.load_state_dict(teacher.state_dict())
    assert restored.frozen


def _save_load(state) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_continues_bit_identically():
    def setup(seed: int = 0):
        student = make_net(seed)
        opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        return student, opt, EmaTeacher(student, decay=0.9)

    student, opt, teacher = setup()
    for step in range(5):
        train_step(student, opt, teacher, step)
    uninterrupted = teacher.state_dict()

    student, opt, teacher = setup()
    for step in range(2):
        train_step(student, opt, teacher, step)
    saved = _save_load(
        {"student": student.state_dict(), "opt": opt.state_dict(), "teacher": teacher.state_dict()}
    )
    # fresh objects, built from a different initialisation and decay: all must be overwritten
    student, opt, _ = setup(seed=7)
    teacher = EmaTeacher(student, decay=0.5)
    student.load_state_dict(saved["student"])
    opt.load_state_dict(saved["opt"])
    teacher.load_state_dict(saved["teacher"])
    assert teacher.num_updates == 2 and teacher.decay == 0.9
    for step in range(2, 5):
        train_step(student, opt, teacher, step)
    resumed = teacher.state_dict()

    assert resumed["num_updates"] == uninterrupted["num_updates"] == 5
    assert resumed["decay"] == uninterrupted["decay"]
    assert resumed["module"].keys() == uninterrupted["module"].keys()
    for name, value in uninterrupted["module"].items():
        assert torch.equal(resumed["module"][name], value), name


def test_state_dict_loads_with_weights_only(tmp_path):
    teacher = EmaTeacher(make_net())
    teacher.soft_labels(batch(0)[0])
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"module", "decay", "num_updates"}
    other = EmaTeacher(make_net(seed=3))
    other.load_state_dict(state)
    for name, value in teacher.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[name], value), name


def test_load_state_dict_refuses_mismatch_and_leaves_teacher_intact():
    teacher = EmaTeacher(make_net())
    before = params(teacher.module)
    wrong = EmaTeacher(
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    )
    shape = r"'3.weight' of shape \(5, 8\), the teacher's is \(3, 8\); build"
    with pytest.raises(ValueError, match=shape):
        teacher.load_state_dict(wrong.state_dict())
    state = teacher.state_dict()
    with pytest.raises(ValueError, match="not an EmaTeacher state"):
        teacher.load_state_dict(state["module"])
    bad = dict(state, module={k: v for k, v in state["module"].items() if k != "0.bias"})
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        teacher.load_state_dict(bad)
    with pytest.raises(ValueError, match="decay must be in"):
        teacher.load_state_dict(dict(state, decay=1.5))
    with pytest.raises(ValueError, match="num_updates=-1"):
        teacher.load_state_dict(dict(state, num_updates=-1))
    for name, value in params(teacher.module).items():
        assert torch.equal(value, before[name]), name


def test_no_gradient_into_teacher_and_student_graph_untouched():
    student = make_net()
    teacher = EmaTeacher(student)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    x, _ = batch(0)
    x.requires_grad_(True)
    p = teacher.soft_labels(x)
    assert not p.requires_grad and p.grad_fn is None

    student.train()
    logits = student(x)
    loss = F.cross_entropy(logits, p)
    loss.backward()
    assert all(q.grad is None for q in teacher.module.parameters())
    # the same gradient as with a plain constant target: nothing else in the graph
    twin = copy.deepcopy(student)
    twin.zero_grad()
    F.cross_entropy(twin(x.detach()), p.clone()).backward()
    for (name, a), b in zip(student.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)

    grads = {n: q.grad.clone() for n, q in student.named_parameters()}
    weights = params(student)
    teacher.update(student)
    for name, q in student.named_parameters():
        assert q.is_leaf and q.requires_grad and q.grad_fn is None
        assert torch.equal(q.grad, grads[name]) and torch.equal(q.detach(), weights[name])
    assert all(not q.requires_grad and q.grad is None for q in teacher.module.parameters())


def test_teacher_is_an_independent_copy():
    student = make_net()
    teacher = EmaTeacher(student)
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.add_(1.0)
    assert not torch.equal(teacher.module[0].weight, student[0].weight)
    assert not torch.equal(teacher.module[1].running_mean, student[1].running_mean)


def test_update_refuses_another_architecture():
    teacher = EmaTeacher(make_net())
    with pytest.raises(ValueError, match="pass the student the teacher was built from"):
        teacher.update(nn.Linear(4, K))
    other = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"'3.weight' \(5, 8\) where the teacher has"):
        teacher.update(other)
    assert teacher.num_updates == 0


@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan"), "0.9", True])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="decay must be") as info:
        EmaTeacher(make_net(), decay=decay)
    assert "\n" not in str(info.value)
