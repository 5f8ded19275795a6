"""MW-Net in your own training loop: a DataLoader that yields sample indices, a trusted
loader, evaluation, a per-sample record of weights and predictions, and the label issues
found from it.

Synthetic data (four classes, 40 % of the training labels flipped) keeps it a few seconds
on a CPU; with your data, only the two Dataset objects change.
"""

import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import mwnet


class Indexed(Dataset):
    """Yields (image, label, index): the index is what ties a weight to a sample."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


torch.manual_seed(0)
x, truth = torch.randn(3000, 20), torch.randint(0, 4, (3000,))
x += 3 * nn.functional.one_hot(truth, 20).float()  # make the classes learnable
noisy = torch.where(torch.rand(3000) < 0.4, (truth + 1) % 4, truth)
train = Indexed(x[:2000], noisy[:2000])  # noisy labels
trusted = TensorDataset(x[2000:2100], truth[2000:2100])  # 100 correctly labelled
test_x, test_y = x[2100:], truth[2100:]

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
rw = mwnet.MetaReweighter(model, optimizer)
signals = mwnet.SampleSignals(train.y, num_classes=4)  # per-sample record, O(n) memory

loader = DataLoader(train, batch_size=100, shuffle=True)
meta = itertools.cycle(DataLoader(trusted, batch_size=100, shuffle=True))
for epoch in range(8):
    model.train()
    for xb, yb, idx in loader:
        xm, ym = next(meta)
        info = rw.step(xb, yb, xm, ym)
        signals.record_step(idx, info.losses, info.weights)  # who got which weight
    model.eval()
    with torch.no_grad():
        test_acc = (model(test_x).argmax(1) == test_y).float().mean()
        signals.record_epoch(mwnet.EpochPredictions.from_logits(model(train.x), train.y))
    print(f"epoch {epoch + 1}: test accuracy {test_acc:.3f}")

wrong = (train.y != truth[:2000]).numpy()
weight = signals.mean("weight")
print(f"mean weight: clean labels {weight[~wrong].mean():.3f}, wrong {weight[wrong].mean():.3f}")
issues = mwnet.find_label_issues(signals)
hits = issues.flagged & wrong
print(
    f"flagged {issues.flagged.sum()} of {len(wrong)} labels (estimated noise rate "
    f"{issues.noise_rate:.3f}, true {wrong.mean():.3f}); {hits.sum() / issues.flagged.sum():.3f} "
    "of the flagged are wrong"
)
