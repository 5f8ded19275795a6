"""Write a stand-in for your own images: Fashion-MNIST as PNG files in the folder layout
`mwnet train data.dataset=folder` reads, with some training labels wrong.

    ROOT/train/<class>/<n>.png   the training images, NOISE of them filed under a wrong class
    ROOT/meta/<class>/<n>.png    a few correctly labelled images per class (the trusted set)
    ROOT/test/<class>/<n>.png    test images

    python examples/make_image_folder.py /tmp/my-images --train 300 --noise 0.4

With your own data you make the same three folders (``meta/`` is optional: without it,
train with data.meta_source=auto).
"""

import argparse
from pathlib import Path

import torch
from PIL import Image

from mwnet.data import load_dataset


def write(root: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    for n, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{n}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=300, help="training images per class")
    parser.add_argument("--meta", type=int, default=10, help="trusted images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    parser.add_argument("--noise", type=float, default=0.4, help="share of wrong labels")
    parser.add_argument("--data-root", help="where the Fashion-MNIST files are (default: search)")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    train = load_dataset("fashion-mnist", "train", root=args.data_root, download=False)
    test = load_dataset("fashion-mnist", "test", root=args.data_root, download=False)
    classes = [c.replace("/", "_") for c in train.classes]
    k = len(classes)
    pick_train, pick_meta, pick_test = [], [], []
    for c in range(k):
        members = torch.nonzero(train.labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        pick_train.append(members[: args.train])
        pick_meta.append(members[args.train : args.train + args.meta])
        in_test = torch.nonzero(test.labels == c).flatten()
        pick_test.append(in_test[: args.test])
    train_idx = torch.cat(pick_train)
    labels = train.labels[train_idx].clone()
    wrong = torch.rand(len(labels), generator=g) < args.noise
    labels[wrong] = (labels[wrong] + torch.randint(1, k, (int(wrong.sum()),), generator=g)) % k
    write(args.root / "train", train.images[train_idx], labels, classes)
    meta_idx = torch.cat(pick_meta)
    write(args.root / "meta", train.images[meta_idx], train.labels[meta_idx], classes)
    test_idx = torch.cat(pick_test)
    write(args.root / "test", test.images[test_idx], test.labels[test_idx], classes)
    print(
        f"wrote {len(train_idx)} training images ({int(wrong.sum())} under a wrong class), "
        f"{len(meta_idx)} trusted and {len(test_idx)} test images under {args.root}"
    )


if __name__ == "__main__":
    main()
