"""The quick start's noisy data, trained by PyTorch Lightning: an ordinary LightningModule,
unchanged, and the MetaWeighting callback (pip install 'mwnet[lightning]')."""

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mwnet.integrations.lightning import MetaWeighting


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):  # MetaWeighting steps in its place in fit
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


torch.manual_seed(0)
x, y = torch.randn(2000, 20), torch.randint(0, 4, (2000,))
x += 3 * nn.functional.one_hot(y, 20).float()  # make the classes learnable
noisy = torch.where(torch.rand(2000) < 0.4, (y + 1) % 4, y)  # 40 % of labels are wrong
train = DataLoader(TensorDataset(x[100:], noisy[100:]), batch_size=100, shuffle=True)
trusted = DataLoader(TensorDataset(x[:100], y[:100]), batch_size=100, shuffle=True)

model = Classifier()
weighting = MetaWeighting(trusted)  # default: 1-100-1 WeightNet, Adam 1e-3
trainer = pl.Trainer(
    max_epochs=16,
    callbacks=[weighting],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
)
trainer.fit(model, train)

with torch.no_grad():
    wrong = noisy[100:] != y[100:]
    losses = nn.functional.cross_entropy(model(x[100:]), noisy[100:], reduction="none")
    w = weighting.weights(losses)
    print(f"mean weight: clean labels {w[~wrong].mean():.3f}, wrong labels {w[wrong].mean():.3f}")
    print(f"accuracy on true labels: {(model(x).argmax(1) == y).float().mean():.3f}")
