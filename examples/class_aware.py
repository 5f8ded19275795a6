"""CMW-Net's class-aware weighting net on long-tailed noisy data, then reused frozen."""

import tempfile
from pathlib import Path

import torch
from torch import nn

import mwnet


def make_data(seed: int, n: int = 3000):
    """4 classes of sizes 8:4:2:1, 30 % of labels moved to the next class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([8.0, 4.0, 2.0, 1.0]), n, replacement=True, generator=g)
    x = torch.randn(n, 20, generator=g) + 3 * nn.functional.one_hot(y, 20).float()
    noisy = torch.where(torch.rand(n, generator=g) < 0.3, (y + 1) % 4, y)
    return x, y, noisy


def train(x, noisy, rw, x_meta=None, y_meta=None, steps=300):
    for _ in range(steps):
        i = torch.randint(0, len(x), (100,))
        meta = {}
        if rw.is_meta_step():  # only steps that update the weighting net need a meta batch
            j = torch.randint(0, len(x_meta), (100,))
            meta = {"x_meta": x_meta[j], "y_meta": y_meta[j]}
        rw.step(x[i], noisy[i], **meta)


torch.manual_seed(0)
x, y, noisy = make_data(seed=0)
x_meta, y_meta = x[:200], y[:200]  # a small trusted set with clean labels
x, y, noisy = x[200:], y[200:], noisy[200:]

counts = torch.bincount(noisy, minlength=4)  # observed labels: what the model trains on
net = mwnet.ClassAwareWeightNet(counts, clusters=3)  # clusters of classes by size
print("classes per cluster (largest first):", torch.bincount(net.cluster_of_class).tolist())
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), net)
train(x, noisy, rw, x_meta, y_meta)

with torch.no_grad():
    losses = nn.functional.cross_entropy(model(x), noisy, reduction="none")
    w, wrong = rw.weights(losses, noisy), noisy != y
    print(f"mean weight: clean labels {w[~wrong].mean():.3f}, wrong labels {w[wrong].mean():.3f}")

# The learned net is an artefact: save it, and apply it frozen to a new model on new data
# of the same classes: no meta set, no meta step, about a plain step's cost.
with tempfile.TemporaryDirectory() as tmp:
    mwnet.save_weight_net(Path(tmp) / "weight_net.pt", net, normalize="sum")
    saved = mwnet.load_weight_net(Path(tmp) / "weight_net.pt")
x2, y2, noisy2 = make_data(seed=1)
torch.manual_seed(1)
model2 = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
frozen = mwnet.MetaReweighter(
    model2,
    torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9),
    saved.net,
    normalize=saved.normalize,
    frozen=True,
)
train(x2, noisy2, frozen)

torch.manual_seed(1)  # the same initial model and batches, with plain cross-entropy
plain = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
for _ in range(300):
    i = torch.randint(0, len(x2), (100,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(plain(x2[i]), noisy2[i]).backward()
    optimizer.step()
with torch.no_grad():
    for name, m in (("frozen weighting net", model2), ("plain cross-entropy", plain)):
        accuracy = (m(x2).argmax(1) == y2).float().mean()
        print(f"new data, {name}: accuracy on true labels {accuracy:.3f}")
