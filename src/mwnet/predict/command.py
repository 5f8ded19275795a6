"""``mwnet predict MODEL INPUTS``: a trained model's predictions for new images, as CSV.

The images are read as the model's training read its own (:mod:`mwnet.predict.model`),
in batches, so a folder of any size streams through in bounded memory. An image that
cannot be read is skipped and listed (a warning line with the count and the first few,
every one in ``<output>.skipped.txt``), never fatal: one broken file among thousands
should not cost the rest. Where the input carries labels, the end prints the accuracy
against them, computed as the training loop computes its test accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

SHOWN_SKIPPED = 3
"""Skipped images named in the warning line; the rest are in the skipped file."""


def add_predict(sub: argparse._SubParsersAction) -> None:
    from mwnet.argtypes import non_negative_int, positive_int

    p = sub.add_parser(
        "predict",
        help="apply a trained model to new images: a folder, a list file or a dataset split",
        description="Predict the class of every image in INPUTS with the model of a run "
        "(its model.pt, or the run directory), reading each image as the run's training "
        "read its own (size, greyscale or RGB, normalisation). Writes one CSV row per "
        "image: path (index for a dataset split), predicted class and its probability, the "
        "top-k classes and probabilities, and the given label where INPUTS has labels (a "
        "class-per-folder tree, a list file with labels, a dataset split), then prints the "
        "accuracy against those labels. Unreadable images are skipped and listed.",
    )
    p.add_argument(
        "model", metavar="MODEL", type=Path, help="a model.pt, a run directory or its checkpoint.pt"
    )
    p.add_argument(
        "inputs",
        metavar="INPUTS",
        nargs="?",
        help="an image folder (every image under it), a list file of 'relative/path [label]' "
        "lines, one image, or a dataset split such as fashion-mnist:test",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the CSV here (default: standard output); unreadable images are listed in "
        "OUTPUT with the suffix .skipped.txt",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="images per forward pass (256)"
    )
    p.add_argument(
        "--top-k",
        type=non_negative_int,
        default=3,
        help="the K most probable classes and their probabilities as columns (default 3)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--data-root",
        help="for a dataset split: where its files are (default: the usual places; never "
        "downloads)",
    )
    p.add_argument(
        "--image-root",
        type=Path,
        help="for a list file: the folder its paths are relative to (default: the list "
        "file's folder)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--export",
        metavar="FILE",
        type=Path,
        help="also (or, without INPUTS, only) write the model as a torch.export archive "
        "(.pt2) that needs torch alone: uint8 images (N, C, H, W) of the model's size in, class "
        "probabilities out, the normalisation inside; class names in its mwnet.json",
    )
    p.set_defaults(func=run_predict)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} but CUDA is not available here; use --device cpu")
    return device


@dataclass
class Tally:
    """What a prediction pass did: images predicted and skipped, and per labelled image
    the predicted and the given class (numbers of the model's classes)."""

    predicted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(name, why)`` of each image that could not be read."""
    pred: list[int] = field(default_factory=list)
    given: list[int] = field(default_factory=list)
    unknown: dict[str, int] = field(default_factory=dict)
    """Given labels that are no class of the model, with their counts."""

    def accuracy(self) -> float | None:
        """Percent of labelled images predicted as labelled, as the training loop scores
        its test set (:func:`mwnet.train.evaluate.accuracy`); None without labels."""
        from mwnet.train.evaluate import accuracy

        return accuracy(torch.tensor(self.pred), torch.tensor(self.given)) if self.given else None


def predict_batches(
    model: Any, inputs: Any, batch_size: int, tally: Tally, progress: bool = False
) -> Iterator[tuple[list[Any], torch.Tensor]]:
    """``(items, probabilities)`` per batch of the images of ``inputs`` that could be
    read; the others go to ``tally.skipped``."""
    from tqdm import tqdm

    from mwnet.data.errors import DatasetError

    tally.skipped.extend(inputs.skipped or [])
    items = inputs.items
    with tqdm(
        total=len(items),
        unit="image",
        desc="predicting",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    ) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            if inputs.images is not None:
                index = torch.tensor([item.index for item in chunk])
                read, images = chunk, model.convert(inputs.images[index])
            else:
                read, pixels = [], []
                for item in chunk:
                    try:
                        pixels.append(model.read_image(item.file))
                    except DatasetError as err:
                        tally.skipped.append((item.name, _why(err, item.name)))
                        continue
                    read.append(item)
                images = torch.stack(pixels) if pixels else None
            bar.update(len(chunk))
            if images is None:
                continue
            yield read, model.predict_proba(images)


def _why(err: Exception, name: str) -> str:
    """The error's message without the path it starts with (the line names it already)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.removeprefix(f"{name}: ").removeprefix(f"{name} ")


def write_predictions(
    out: IO[str], model: Any, inputs: Any, batch_size: int, top_k: int, progress: bool
) -> Tally:
    """Predict every image of ``inputs`` with ``model`` and write the CSV rows to ``out``."""
    from mwnet.predict.inputs import class_index

    classes = model.classes
    k = min(top_k, len(classes))
    header = [inputs.column, "predicted", "probability"]
    for rank in range(1, k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    labelled = inputs.labelled
    if labelled:
        header.append("label")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    tally = Tally()
    for items, probs in predict_batches(model, inputs, batch_size, tally, progress):
        top_p, top_i = probs.topk(max(k, 1), dim=1)
        for item, p_row, i_row in zip(items, top_p.tolist(), top_i.tolist(), strict=True):
            row = [item.name, classes[i_row[0]], f"{p_row[0]:.6f}"]
            for p, i in list(zip(p_row, i_row, strict=True))[:k]:
                row += [classes[i], f"{p:.6f}"]
            if labelled:
                row.append("" if item.label is None else item.label)
            writer.writerow(row)
            tally.predicted += 1
            if item.label is None:
                continue
            given = class_index(item.label, classes)
            if given is None:
                tally.unknown[item.label] = tally.unknown.get(item.label, 0) + 1
            else:
                tally.pred.append(i_row[0])
                tally.given.append(given)
    return tally


def skipped_file(output: Path) -> Path:
    """Where the images skipped while writing ``output`` are listed: ``x.csv`` ->
    ``x.skipped.txt``."""
    return output.with_suffix(".skipped.txt")


def run_predict(args: argparse.Namespace) -> int:
    from mwnet.predict.inputs import open_inputs
    from mwnet.predict.model import load_model
    from mwnet.run.atomic import atomic_write

    if args.inputs is None and args.export is None:
        raise ValueError("give INPUTS to predict (see `mwnet predict --help`), or --export FILE")
    model = load_model(args.model, _device(args.device))
    if args.export is not None:
        from mwnet.predict.export import export_model

        print(f"exported {export_model(model, args.export)} (torch.export)", file=sys.stderr)
        if args.inputs is None:
            return 0
    if model.input.table is not None:
        from mwnet.predict.inputs import open_table_inputs

        inputs = open_table_inputs(args.inputs, model.input.table)
    else:
        inputs = open_inputs(args.inputs, model.classes, args.data_root, args.image_root)
    if args.output is None:
        writing: contextlib.AbstractContextManager[IO[str]] = contextlib.nullcontext(sys.stdout)
    else:
        writing = atomic_write(args.output)
    with writing as out:
        tally = write_predictions(
            out, model, inputs, args.batch_size, args.top_k, progress=not args.quiet
        )
    report = sys.stdout if args.output is not None else sys.stderr
    where = f" -> {args.output}" if args.output is not None else ""
    unit = "row" if inputs.kind == "table" else "image"
    print(f"predicted {tally.predicted} {unit}(s) of {args.inputs}{where}", file=report)
    _report_skipped(tally, args.output)
    if not tally.predicted:
        raise ValueError(
            f"no image of {args.inputs} could be read ({len(tally.skipped)} skipped; the first: "
            f"{tally.skipped[0][0]}: {tally.skipped[0][1]})"
            if tally.skipped
            else f"{args.inputs} holds no image"
        )
    if tally.unknown:
        names = ", ".join(repr(n) for n in list(tally.unknown)[:3])
        count = sum(tally.unknown.values())
        print(
            f"warning: {count} {unit}(s) are labelled with a class the model does not know "
            f"({names}); the accuracy leaves them out",
            file=sys.stderr,
        )
    acc = tally.accuracy()
    if acc is not None:
        right = sum(int(p == g) for p, g in zip(tally.pred, tally.given, strict=True))
        print(
            f"accuracy {acc:.2f} % ({right} of {len(tally.given)} labelled {unit}s)",
            file=report,
        )
    return 0


def _report_skipped(tally: Tally, output: Path | None) -> None:
    listing = None if output is None else skipped_file(output)
    if listing is not None and listing.exists() and not tally.skipped:
        listing.unlink()  # an earlier pass's list would describe another output
    if not tally.skipped:
        return
    names = ", ".join(name for name, _ in tally.skipped[:SHOWN_SKIPPED])
    more = ", ..." if len(tally.skipped) > SHOWN_SKIPPED else ""
    if listing is not None:
        from mwnet.run.atomic import atomic_write

        with atomic_write(listing) as f:
            f.writelines(f"{name}\t{why}\n" for name, why in tally.skipped)
        where = f"; all listed in {listing}"
    else:
        where = ":"
    print(
        f"warning: skipped {len(tally.skipped)} image(s) that could not be read ({names}{more})"
        f"{where}",
        file=sys.stderr,
    )
    if listing is None:
        for name, why in tally.skipped:
            print(f"  {name}: {why}", file=sys.stderr)
