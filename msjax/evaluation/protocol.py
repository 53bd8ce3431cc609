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
import os
import sys
import time
from pathlib import Path

import numpy as np

from msjax.data import datasets
from msjax.errors import ConfigError, DataError
from msjax.evaluation import inference, metrics

PROTOCOLS = ("original", "full")
PROTOCOL_TEXT = {
    "original": "image bicubic {size}, labels nearest {label} (the paper's protocol)",
    "full": "image bicubic {size}, logits upsampled to the native {label} labels",
}
DEFAULT_INPUT_SIZE = "1024x512"


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where the images and labels of one evaluation come from.

    Attributes:
      dataset: the CLI name ('cityscapes', 'nthu-rome', ...).
      builder: the prepared data set ('cityscapes', 'nthu').
      split: split name.
      image_config: prepared config of the images fed to the network.
      label_config: prepared config of the labels compared with.
      class_counts: checkpoint class counts that fit the data set.
    """

    dataset: str
    builder: str
    split: str
    image_config: str
    label_config: str
    class_counts: tuple[int, ...]


def _synthetic_builder(dataset: str) -> tuple[str, str]:
    """(builder, config prefix) of 'synthetic' (the "real" style) or 'synthetic-<domain>'."""
    from msjax.data import synthetic

    domain = "target" if dataset == "synthetic" else dataset.removeprefix("synthetic-")
    try:
        family, severity = synthetic.parse_domain(domain)
    except ValueError:
        family = None
    if family is None or family == "source":
        corrupted = [f"synthetic-{d}" for d in synthetic.DOMAINS[2:]]
        raise ConfigError(
            f"--dataset {dataset!r}: the synthetic data sets are 'synthetic' (the \"real\" "
            f"style) and {corrupted}."
        )
    return f"synthetic_{family}", f"s{severity}_" if severity else ""


def resolve(dataset: str, protocol: str, split: str | None, input_size: str) -> Setting:
    """Checks the flags and names the prepared data each evaluation reads.

    Args:
      dataset: 'cityscapes' or 'nthu-CITY' (CITY in rome, rio, tokyo, taipei).
      protocol: 'original' or 'full'.
      split: split name, or None for the data set's evaluation split (val / test).
      input_size: 'WxH' the images were prepared at (a config of the data set).

    Returns:
      A Setting.
    """
    from msjax.data import builders

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: valid protocols are {list(PROTOCOLS)}.")
    cities = [f"nthu-{c}" for c in datasets.NTHU_CITIES]
    if dataset == "cityscapes":
        builder, prefix, default_split, counts = "cityscapes", "", "val", (19, 16, 13)
    elif dataset in cities:
        city = dataset.split("-", 1)[1]
        builder, prefix, default_split, counts = "nthu", f"{city}_", "test", (13,)
    elif dataset == "synthetic" or dataset.startswith("synthetic-"):
        # The "real"-style target or a corrupted domain ('synthetic-fog-2') of
        # msjax.data.synthetic. Smoke runs of every setting (19, 16 or 13 classes) are scored
        # on them.
        builder, prefix = _synthetic_builder(dataset)
        default_split, counts = "val", (19, 16, 13)
        if protocol == "full":
            raise ConfigError(
                "--dataset synthetic has no native-size labels: use --protocol "
                "original with --input-size 128x64, 192x96 or 256x128."
            )
    else:
        valid = ["cityscapes", *cities, "synthetic", "synthetic-fog-2 (any corrupted domain)"]
        raise ConfigError(f"--dataset {dataset!r}: valid data sets are {valid}.")
    image_config = f"{prefix}{input_size}"
    names = [c for c in builders.config_names(builder) if c.startswith(prefix)]
    valid = [c[len(prefix) :] for c in names if c != f"{prefix}full"]
    if image_config not in builders.config_names(builder) or input_size == "full":
        raise ConfigError(f"--input-size {input_size!r}: {dataset} images come in {valid}.")
    label_config = image_config if protocol == "original" else f"{prefix}full"
    return Setting(dataset, builder, split or default_split, image_config, label_config, counts)


def check_classes(metadata: dict, setting: Setting, checkpoint: str) -> int:
    """The checkpoint's class count, or an ConfigError if it does not fit the data set."""
    num_classes = metadata.get("num_classes")
    if num_classes not in setting.class_counts:
        fits = " or ".join(str(c) for c in setting.class_counts)
        raise ConfigError(
            f"{checkpoint}/metadata.json says num_classes={num_classes}, but {setting.dataset} "
            f"is evaluated with {fits} classes (19 = GTA5 -> Cityscapes, 16 = SYNTHIA -> "
            "Cityscapes, 13 = the cross-city and mIoU* class set). Check --checkpoint and "
            "--dataset."
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

    def stream(config):
        return pipeline.make_eval_stream(
            dict(dataset=setting.builder, config=config, split=setting.split),
            data_dir=os.fspath(data_dir),
            batch_size=batch_size,
            num_classes=num_classes,
            normalization=normalization,
            process_index=0,
            process_count=1,
            with_ids=True,
        )

    images = stream(setting.image_config)
    if setting.label_config == setting.image_config:
        return len(images), iter(images), images.num_examples
    labels_ = stream(setting.label_config)
    if labels_.num_examples != images.num_examples:
        raise DataError(
            f"{setting.builder}/{setting.image_config} has {images.num_examples} {setting.split} "
            f"examples but {setting.builder}/{setting.label_config} has {labels_.num_examples}; "
            "prepare both from the same raw folder."
        )

    def zipped():
        for a, b in zip(images, labels_, strict=True):
            if not np.array_equal(a["id"], b["id"]):
                raise DataError(
                    f"{setting.builder}: configs {setting.image_config} and "
                    f"{setting.label_config} list examples in different orders "
                    f"({a['id'][0]!r} vs {b['id'][0]!r}); prepare both again."
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
    input_size: str = DEFAULT_INPUT_SIZE,
    batch_size: int = 1,
    predictions_dir=None,
    precision: str = inference.DEFAULT_PRECISION,
    progress: bool = True,
) -> dict:
    """Evaluates a weights folder on a prepared data set.

    Args:
      checkpoint: a weights folder (`msjax.weights` format: metadata.json + variables/).
      dataset: 'cityscapes' or 'nthu-CITY'.
      data_dir: the `--data-dir` the data set was prepared into.
      protocol: 'original' or 'full'.
      views: flip and scales averaged at test time.
      split: split name (default val for Cityscapes, test for NTHU).
      input_size: 'WxH' the network sees.
      batch_size: images per step.
      predictions_dir: if given, write Cityscapes label-id PNGs of the predictions there.
      precision: 'highest' (true float32) or 'default' (TF32 convolutions on recent GPUs).
      progress: show a progress bar.

    Returns:
      A JSON-ready dict: the setting, the protocol, the views, the confusion matrix and
      `metrics.summarize` of it under 'scores' (fractions), timing.
    """
    from msjax import weights

    setting = resolve(dataset, protocol, split, input_size)
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1.")
    metadata = weights.read_metadata(os.fspath(checkpoint))
    num_classes = check_classes(metadata, setting, os.fspath(checkpoint))
    normalization = metadata.get("input_normalization", "caffe_bgr")
    num_batches, stream, num_images = batches(
        setting, data_dir, batch_size, num_classes, normalization
    )
    model, variables = weights.load(os.fspath(checkpoint))
    save = predictions_dir is not None
    step = inference.make_eval_step(model, num_classes, views, save, precision)
    start = time.perf_counter()
    if progress:
        from tqdm import tqdm

        desc = f"{dataset} {setting.split}"
        stream = tqdm(stream, total=num_batches, desc=desc, unit="batch", file=sys.stderr)
    matrix, image_hw, label_hw = _accumulate(stream, step, variables, num_classes, predictions_dir)
    seconds = time.perf_counter() - start
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "weights": {k: metadata.get(k) for k in ("num_classes", "input_normalization", "layout")},
        "dataset": dataset,
        "split": setting.split,
        "protocol": protocol,
        "protocol_text": PROTOCOL_TEXT[protocol].format(
            size=input_size, label=f"{label_hw[1]}x{label_hw[0]}" if label_hw else "?"
        ),
        "input_size": input_size,
        "image_hw": list(image_hw) if image_hw else None,
        "label_hw": list(label_hw) if label_hw else None,
        "views": {"flip": views.flip, "scales": list(views.scales), "text": views.describe()},
        "num_images": num_images,
        "precision": precision,
        "scores": metrics.summarize(matrix),
        "confusion_matrix": matrix.tolist(),
        "seconds": round(seconds, 3),
    }


def _accumulate(stream, step, variables, num_classes: int, predictions_dir):
    """(int64 confusion matrix, image (h, w), label (h, w)) of one pass over `stream`.

    With `predictions_dir`, every real (unpadded) prediction is also written there as a
    Cityscapes label-id PNG.
    """
    from PIL import Image

    from msjax.evaluation import visualize

    if predictions_dir is not None:
        Path(predictions_dir).mkdir(parents=True, exist_ok=True)
    acc = metrics.ConfusionAccumulator(num_classes)
    image_hw = label_hw = None
    for batch in stream:
        image_hw, label_hw = batch["image"].shape[1:3], batch["label"].shape[1:3]
        out = step(variables, batch["image"], batch["label"], batch["mask"])
        matrix, pred = out if predictions_dir is not None else (out, None)
        acc.add(matrix, pixels=batch["label"].size)
        if predictions_dir is None:
            continue
        ids = visualize.to_cityscapes_ids(np.asarray(pred), num_classes)
        for key, keep, img in zip(batch["id"], batch["mask"], ids, strict=True):
            if keep:
                Image.fromarray(img).save(Path(predictions_dir) / _prediction_name(key))
    return acc.result(), image_hw, label_hw


def default_out_dir(checkpoint, dataset: str, protocol: str, views: inference.Views) -> Path:
    """eval/<checkpoint name>/<dataset>_<protocol>[_flip][_ms] under the working folder."""
    tag = f"{dataset}_{protocol}" + ("_flip" if views.flip else "")
    tag += "_ms" if views.scales != (1.0,) else ""
    return Path("eval") / Path(os.path.abspath(checkpoint)).name / tag
