"""Evaluation of a weights folder on a prepared split, under a named protocol.

Protocols (docs/protocol.md); both feed the network the image resized bicubic to 1024x512
(`input_size`), as the original does:
- `original`: labels resized nearest to 1024x512 too, and compared there: the protocol of
  the paper's numbers (prepared config `1024x512` of the data set);
- `full`: the main head's logits upsampled (bilinear, align corners) to the native label
  resolution, 2048x1024, and compared with the untouched labels: the protocol of most later
  papers (prepared configs `1024x512` for the images and `full` for the labels).

Either may average the prediction with that of the flipped image (`views`). The original's
only evaluation command passes `--flip True`; the paper does not say whether its numbers
used it, so `python -m msjax.reproduce` reports both.

The confusion matrix counts every labelled pixel of the split once (padding masked, 255
ignored) and is exact (int64). `python -m msjax.evaluate` is the command; the report it
writes is `msjax.evaluation.report`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from msjax.data import datasets
from msjax.errors import ConfigError, DataError
from msjax.evaluation import inference, metrics
from msjax.evaluation.loop import evaluate_split

DEFAULT_INPUT_SIZE = "1024x512"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How the predictions of images at a prepared size are compared with labels.

    Attributes:
      text: the protocol in words ({size}: the input size, {label}: the labels' size).
      label_size: (data set, input size) -> the prepared size of the labels compared with;
        the logits are upsampled to it (bilinear, align corners).
    """

    text: str
    label_size: Callable[[datasets.DataSet, str], str]


PROTOCOLS = {
    "original": Protocol(
        "image bicubic {size}, labels nearest {label} (the paper's protocol)",
        lambda dataset, size: size,
    ),
    "full": Protocol(
        "image bicubic {size}, logits upsampled to the native {label} labels",
        lambda dataset, size: datasets.FULL,
    ),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where the images and labels of one evaluation come from.

    Attributes:
      dataset: the data set's entry (msjax.data.datasets).
      split: split name.
      image_size: prepared size of the images fed to the network.
      label_size: prepared size of the labels compared with.
    """

    dataset: datasets.DataSet
    split: str
    image_size: str
    label_size: str


def default_input_size(dataset: datasets.DataSet) -> str:
    """The paper's 1024x512 where the data set has it, else its own default size."""
    return DEFAULT_INPUT_SIZE if DEFAULT_INPUT_SIZE in dataset.sizes else dataset.sizes[0]


def resolve(dataset: str, protocol: str, split: str | None, input_size: str | None) -> Setting:
    """Checks the flags and names the prepared data each evaluation reads.

    Args:
      dataset: a data set name (msjax.data.datasets), e.g. 'cityscapes' or 'nthu-rome'.
      protocol: 'original' or 'full'.
      split: split name, or None for the data set's evaluation split (val / test).
      input_size: 'WxH' the images were prepared at, or None (`default_input_size`).

    Returns:
      A Setting.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: valid protocols are {list(PROTOCOLS)}.")
    entry = datasets.get(dataset, "--dataset")
    size = input_size or default_input_size(entry)
    if size not in entry.sizes:
        raise ConfigError(f"--input-size {size!r}: {dataset} images come in {list(entry.sizes)}.")
    label_size = PROTOCOLS[protocol].label_size(entry, size)
    if label_size not in entry.all_sizes:
        raise ConfigError(
            f"--protocol {protocol}: {dataset} has no {label_size} labels (it is generated at "
            f"the prepared sizes {', '.join(entry.sizes)}); use --protocol original."
        )
    return Setting(entry, split or entry.eval_split, size, label_size)


def check_classes(metadata: dict, setting: Setting, checkpoint: str) -> int:
    """The checkpoint's class count, or an ConfigError if it does not fit the data set."""
    num_classes = metadata.get("num_classes")
    counts = setting.dataset.class_counts
    if num_classes not in counts:
        fits = " or ".join(str(c) for c in counts)
        raise ConfigError(
            f"{checkpoint}/metadata.json says num_classes={num_classes}, but "
            f"{setting.dataset.name} is evaluated with {fits} classes (19 = GTA5 -> "
            "Cityscapes, 16 = SYNTHIA -> Cityscapes, 13 = the cross-city and mIoU* class "
            "set). Check --checkpoint and --dataset."
        )
    return num_classes


def batches(setting: Setting, data_dir, batch_size: int, num_classes: int, normalization: str):
    """Evaluation batches of the setting: (number of batches, iterator of batch dicts).

    Each batch has 'image' (normalised, at the image config's size), 'label' (at the label
    config's size, in the checkpoint's class subset), 'mask' and 'id'. For the `full`
    protocol two prepared configs are read in the same order and zipped; their example ids
    are checked to agree.
    """
    from msjax.data import pipeline

    name = setting.dataset.name

    def stream(size):
        return pipeline.make_eval_stream(
            dict(dataset=name, size=size, split=setting.split),
            data_dir=os.fspath(data_dir),
            batch_size=batch_size,
            num_classes=num_classes,
            normalization=normalization,
            process_index=0,
            process_count=1,
            with_ids=True,
        )

    images = stream(setting.image_size)
    if setting.label_size == setting.image_size:
        return len(images), iter(images), images.num_examples
    labels_ = stream(setting.label_size)
    if labels_.num_examples != images.num_examples:
        raise DataError(
            f"{name} {setting.image_size} has {images.num_examples} {setting.split} examples "
            f"but {name} {setting.label_size} has {labels_.num_examples}; prepare both from "
            "the same raw folder."
        )

    def zipped():
        for a, b in zip(images, labels_, strict=True):
            if not np.array_equal(a["id"], b["id"]):
                raise DataError(
                    f"{name}: sizes {setting.image_size} and {setting.label_size} list "
                    f"examples in different orders ({a['id'][0]!r} vs {b['id'][0]!r}); "
                    "prepare both again."
                )
            yield dict(a, label=b["label"])

    return len(images), zipped(), images.num_examples


def _prediction_name(key) -> str:
    key = key.decode() if isinstance(key, bytes) else str(key)
    return f"{key}_pred_labelIds.png"


def evaluate(
    checkpoint,
    dataset: str,
    data_dir,
    *,
    protocol: str = "original",
    views: inference.Views = inference.SINGLE_VIEW,
    split: str | None = None,
    input_size: str | None = None,
    batch_size: int = 1,
    predictions_dir=None,
    precision: str = inference.DEFAULT_PRECISION,
    progress: bool = True,
    max_images: int | None = None,
) -> dict:
    """Evaluates a weights folder on a prepared data set.

    Args:
      checkpoint: a weights folder (`msjax.weights` format: metadata.json + variables/).
      dataset: a data set name, e.g. 'cityscapes' or 'nthu-rome'.
      data_dir: the `--data-dir` the data set was prepared into.
      protocol: a name of PROTOCOLS; views: flip and scales averaged at test time.
      split, input_size: default the data set's evaluation split, `default_input_size`.
      batch_size: images per step; progress: show a progress bar.
      predictions_dir: if given, write Cityscapes label-id PNGs of the predictions there.
      precision: 'highest' (true float32) or 'default' (TF32 convolutions on recent GPUs).
      max_images: score only the first batches holding this many images (None: all).

    Returns:
      A JSON-ready dict: the setting, protocol, views, the confusion matrix and
      `metrics.summarize` of it under 'scores' (fractions), 'seconds' and
      'first_batch_seconds' (compilation, the pipeline's start and the first batch).
    """
    from msjax import weights

    setting = resolve(dataset, protocol, split, input_size)
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1.")
    metadata = weights.read_metadata(os.fspath(checkpoint))
    num_classes = check_classes(metadata, setting, os.fspath(checkpoint))
    normalization = metadata.get("input_normalization", "caffe_bgr")
    stream, num_images = _split_stream(
        setting, data_dir, batch_size, num_classes, normalization, max_images, progress
    )
    model, variables = weights.load(os.fspath(checkpoint))
    step = inference.make_eval_step(model, num_classes, views, precision)
    start = time.perf_counter()
    seen = _Shapes(num_classes, predictions_dir, start)
    matrix, _ = evaluate_split(step, variables, stream, num_classes, on_batch=seen)
    seconds = time.perf_counter() - start
    return {
        **_record(checkpoint, metadata, dataset, setting, protocol, views, seen),
        "num_images": num_images,
        "precision": precision,
        "scores": metrics.summarize(matrix),
        "confusion_matrix": matrix.tolist(),
        "seconds": round(seconds, 3),
        "first_batch_seconds": seen.first_batch_seconds,
    }


class _Shapes:
    """`evaluate_split`'s on_batch: notes the image and label sizes and the time the first
    batch was done (from `start`) and, with `predictions_dir`, writes every real (unpadded)
    prediction as a label-id PNG there."""

    def __init__(self, num_classes: int, predictions_dir, start: float):
        self.num_classes, self.predictions_dir = num_classes, predictions_dir
        self.image_hw = self.label_hw = None
        self.start, self.first_batch_seconds = start, None
        if predictions_dir is not None:
            Path(predictions_dir).mkdir(parents=True, exist_ok=True)

    def __call__(self, batch: dict, out: dict) -> None:
        from PIL import Image

        from msjax.evaluation import visualize

        self.image_hw, self.label_hw = batch["image"].shape[1:3], batch["label"].shape[1:3]
        if self.first_batch_seconds is None:  # waits for the first batch only
            out["matrix"].block_until_ready()
            self.first_batch_seconds = round(time.perf_counter() - self.start, 3)
        if self.predictions_dir is None:
            return
        ids = visualize.to_cityscapes_ids(np.asarray(out["pred"]), self.num_classes)
        for key, keep, img in zip(batch["id"], batch["mask"], ids, strict=True):
            if keep:
                Image.fromarray(img).save(Path(self.predictions_dir) / _prediction_name(key))


def _split_stream(setting, data_dir, batch_size, num_classes, normalization, max_images,
                  progress):  # fmt: skip
    """(batches, number of images) of the split; only the first batches holding
    `max_images` if given; behind a progress bar if `progress`."""
    num_batches, stream, num_images = batches(
        setting, data_dir, batch_size, num_classes, normalization
    )
    if max_images is not None:
        num_batches = min(num_batches, math.ceil(max_images / batch_size))
        num_images = min(num_images, num_batches * batch_size)
        stream = itertools.islice(stream, num_batches)
    if progress:
        from tqdm import tqdm

        desc = f"{setting.dataset.name} {setting.split}"
        stream = tqdm(stream, total=num_batches, desc=desc, unit="batch", file=sys.stderr)
    return stream, num_images


def _record(
    checkpoint,
    metadata: dict,
    dataset: str,
    setting: Setting,
    protocol: str,
    views: inference.Views,
    seen: _Shapes,
) -> dict:
    """What an evaluation was of: the weights, the split, the protocol, the views, sizes."""
    image_hw, label_hw = seen.image_hw, seen.label_hw
    label = f"{label_hw[1]}x{label_hw[0]}" if label_hw else "?"
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "weights": {
            k: metadata.get(k) for k in ("num_classes", "input_normalization", "layout", "method")
        },
        "dataset": dataset,
        "split": setting.split,
        "protocol": protocol,
        "protocol_text": PROTOCOLS[protocol].text.format(size=setting.image_size, label=label),
        "input_size": setting.image_size,
        "image_hw": list(image_hw) if image_hw else None,
        "label_hw": list(label_hw) if label_hw else None,
        "views": {"flip": views.flip, "scales": list(views.scales), "text": views.describe()},
    }  # fmt: skip


def default_out_dir(checkpoint, dataset: str, protocol: str, views: inference.Views) -> Path:
    """eval/<checkpoint's path>/<dataset>_<protocol>[_flip][_ms] under the working folder.

    The whole path names the folder (relative to the working folder when the checkpoint is
    under it), so two checkpoints never share one: runs/a/best -> eval/runs/a/best/...
    """
    tag = f"{dataset}_{protocol}" + ("_flip" if views.flip else "")
    tag += "_ms" if views.scales != (1.0,) else ""
    path = Path(os.path.abspath(os.path.expanduser(checkpoint)))
    try:
        named = path.relative_to(Path.cwd())
    except ValueError:
        named = path.relative_to(path.anchor)
    return Path("eval") / named / tag
