"""Meta-Weight-Net on synthetic data with 40 % flipped labels, in a dozen lines."""

import torch
from torch import nn

import mwnet

torch.manual_seed(0)
x, y = torch.randn(2000, 20), torch.randint(0, 4, (2000,))
x += 3 * nn.functional.one_hot(y, 20).float()  # make the classes learnable
noisy = torch.where(torch.rand(2000) < 0.4, (y + 1) % 4, y)  # 40 % of labels are wrong
x_meta, y_meta = x[:100], y[:100]  # a small trusted set with clean labels

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
rw = mwnet.MetaReweighter(model, optimizer)  # default: 1-100-1 WeightNet, Adam 1e-3

for _ in range(300):
    i = torch.randint(100, 2000, (100,))
    j = torch.randint(0, 100, (100,))
    info = rw.step(x[i], noisy[i], x_meta[j], y_meta[j])

with torch.no_grad():
    wrong = noisy[100:] != y[100:]
    w = rw.weights(nn.functional.cross_entropy(model(x[100:]), noisy[100:], reduction="none"))
    print(f"mean weight: clean labels {w[~wrong].mean():.3f}, wrong labels {w[wrong].mean():.3f}")
    print(f"accuracy on true labels: {(model(x).argmax(1) == y).float().mean():.3f}")
