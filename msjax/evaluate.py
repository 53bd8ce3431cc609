"""`python -m msjax.evaluate`: a checkpoint -> exact mIoU under a named protocol, with a report.

    python -m msjax.evaluate --checkpoint weights/gta5_iw_multi --dataset cityscapes \
        --data-dir ~/tfds [--protocol original|full] [--flip] [--scales 0.75,1.0,1.25] \
        [--split val] [--method maxsquare_iw_multi] [--out DIR] [--save-predictions]

Protocols (REFERENCE.md section 7); both feed the network the image resized bicubic to
1024x512 (`--input-size`), as the original does:
- `original`: labels resized nearest to 1024x512 too, and compared there: the protocol of
  the paper's numbers (prepared config `1024x512` of the data set);
- `full`: the main head's logits upsampled (bilinear, align corners) to the native label
  resolution, 2048x1024, and compared with the untouched labels: the protocol of most later
  papers (prepared configs `1024x512` for the images and `full` for the labels).

The confusion matrix counts every labelled pixel of the split once (padding masked, 255
ignored) and is exact (int64). The report prints per-class IoU with the class names of the
checkpoint's class set (19, 16 or 13), mIoU (plus the 13-class mIoU* of a 16-class SYNTHIA
model), and the paper's row for the setting; it writes OUT/results.json, OUT/results.md and
OUT/iou.png (per-class bars against the paper). `--save-predictions` also writes every
prediction as a Cityscapes label-id PNG (the benchmark's submission format) in
OUT/predictions/, which the official cityscapesscripts evaluator reads unchanged.

Errors (missing data, a checkpoint whose class count does not fit the data set, bad flags)
print one paragraph and exit 2; --verbose shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from msjax import inference, metrics, published
from msjax.data import DataError, datasets

PROTOCOLS = ("original", "full")
PROTOCOL_TEXT = {
    "original": "image bicubic {size}, labels nearest {label} (the paper's protocol)",
    "full": "image bicubic {size}, logits upsampled to the native {label} labels",
}
DEFAULT_INPUT_SIZE = "1024x512"


class EvaluateError(ValueError):
    """A user-facing problem with the evaluation request (flags, class counts)."""


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
        raise EvaluateError(f"--protocol {protocol!r}: valid protocols are {list(PROTOCOLS)}.")
    cities = [f"nthu-{c}" for c in datasets.NTHU_CITIES]
    if dataset == "cityscapes":
        builder, prefix, default_split, counts = "cityscapes", "", "val", (19, 16, 13)
    elif dataset in cities:
        city = dataset.split("-", 1)[1]
        builder, prefix, default_split, counts = "nthu", f"{city}_", "test", (13,)
    elif dataset == "synthetic":  # the demo's "real"-style target (msjax.data.synthetic)
        builder, prefix, default_split, counts = "synthetic_target", "", "val", (19,)
        if protocol == "full":
            raise EvaluateError(
                "--dataset synthetic has no native-size labels: use --protocol "
                "original with --input-size 128x64, 192x96 or 256x128."
            )
    else:
        raise EvaluateError(
            f"--dataset {dataset!r}: valid data sets are {['cityscapes', *cities, 'synthetic']}."
        )
    image_config = f"{prefix}{input_size}"
    valid = [c[len(prefix) :] for c in builders.config_names(builder) if c != f"{prefix}full"]
    if image_config not in builders.config_names(builder) or input_size == "full":
        raise EvaluateError(f"--input-size {input_size!r}: {dataset} images come in {valid}.")
    label_config = image_config if protocol == "original" else f"{prefix}full"
    return Setting(dataset, builder, split or default_split, image_config, label_config, counts)


def check_classes(metadata: dict, setting: Setting, checkpoint: str) -> int:
    """The checkpoint's class count, or an EvaluateError if it does not fit the data set."""
    num_classes = metadata.get("num_classes")
    if num_classes not in setting.class_counts:
        fits = " or ".join(str(c) for c in setting.class_counts)
        raise EvaluateError(
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
    from PIL import Image
    from tqdm import tqdm

    from msjax import visualize, weights

    setting = resolve(dataset, protocol, split, input_size)
    if batch_size < 1:
        raise EvaluateError(f"--batch-size {batch_size}: must be at least 1.")
    metadata = weights.read_metadata(os.fspath(checkpoint))
    num_classes = check_classes(metadata, setting, os.fspath(checkpoint))
    normalization = metadata.get("input_normalization", "caffe_bgr")
    num_batches, stream, num_images = batches(
        setting, data_dir, batch_size, num_classes, normalization
    )
    model, variables = weights.load(os.fspath(checkpoint))
    save = predictions_dir is not None
    if save:
        Path(predictions_dir).mkdir(parents=True, exist_ok=True)
    step = inference.make_eval_step(model, num_classes, views, save, precision)
    acc = metrics.ConfusionAccumulator(num_classes)
    start, label_hw, image_hw = time.perf_counter(), None, None
    bar = tqdm(stream, total=num_batches, desc=f"{dataset} {setting.split}", unit="batch",
               disable=not progress, file=sys.stderr)  # fmt: skip
    for batch in bar:
        image_hw, label_hw = batch["image"].shape[1:3], batch["label"].shape[1:3]
        out = step(variables, batch["image"], batch["label"], batch["mask"])
        matrix, pred = out if save else (out, None)
        acc.add(matrix, pixels=batch["label"].size)
        if save:
            ids = visualize.to_cityscapes_ids(np.asarray(pred), num_classes)
            for key, keep, img in zip(batch["id"], batch["mask"], ids, strict=True):
                if keep:
                    Image.fromarray(img).save(Path(predictions_dir) / _prediction_name(key))
    matrix = acc.result()
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


def _pct(value) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def _published_for(results: dict, method: str | None):
    return published.result(results["dataset"], results["scores"]["num_classes"], method)


def report_rows(results: dict, method: str | None = None) -> tuple[list, list[str]]:
    """Table rows (name, msjax %, paper % or '') and the header lines of a report."""
    s = results["scores"]
    pub = _published_for(results, method)
    per_class = pub.per_class if pub and pub.per_class else [None] * s["num_classes"]
    rows = [
        (name, _pct(v), "" if p is None else f"{p:.1f}")
        for name, v, p in zip(s["classes"], s["iou"], per_class, strict=True)
    ]
    rows.append(
        (f"mIoU ({s['num_classes']} classes)", _pct(s["miou"]), f"{pub.miou:.1f}" if pub else "")
    )
    if "miou13" in s:
        rows.append(("mIoU* (13 of 16)", _pct(s["miou13"]), f"{pub.miou13:.1f}" if pub else ""))
    rows.append(("pixel accuracy", _pct(s["pixel_accuracy"]), ""))
    header = [
        f"msjax evaluation of {results['checkpoint']}",
        f"data: {results['dataset']} {results['split']}, {results['num_images']} images; "
        f"protocol {results['protocol']}: {results['protocol_text']}; "
        f"{results['views']['text']}",
    ]
    if pub:
        header.append(f"paper column: {pub.label}, evaluated with the original protocol")
        if results["protocol"] != "original":
            header.append("note: the paper's numbers use the original protocol (labels at "
                          "1024x512), not this one: compare with care")  # fmt: skip
        if results["views"]["text"] != inference.SINGLE_VIEW.describe():
            header.append("note: test-time augmentation is on; the published numbers may "
                          "not use it")  # fmt: skip
        others = [
            f"{published.METHOD_NAMES[r.method]} {r.miou:.1f}"
            + (f" / {r.miou13:.1f}" if r.miou13 is not None else "")
            for r in published.results(results["dataset"], s["num_classes"])
        ]
        header.append("paper mIoU" + (" (16 / 13 classes)" if "miou13" in s else "") + ": "
                      + ", ".join(others))  # fmt: skip
    return rows, header


def format_table(results: dict, method: str | None = None) -> str:
    """The plain-text report printed by the CLI."""
    rows, header = report_rows(results, method)
    width = max(len(r[0]) for r in rows) + 2
    lines = [*header, "", f"{'class':<{width}}{'msjax %':>9}{'paper %':>9}"]
    lines += [f"{n:<{width}}{a:>9}{b:>9}" for n, a, b in rows]
    lines.append(f"({results['seconds']:.1f} s)")
    return "\n".join(lines)


def markdown_table(results: dict, method: str | None = None) -> str:
    """The same report as a Markdown table (results.md)."""
    rows, header = report_rows(results, method)
    lines = [f"- {h}" for h in header] + [
        "",
        "| class | msjax IoU % | paper IoU % |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {a} | {b} |" for n, a, b in rows]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir, method: str | None = None) -> dict[str, Path]:
    """Writes results.json, results.md and iou.png into out_dir; returns their paths."""
    from msjax import visualize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "iou.png"}
    pub = _published_for(results, method)
    record = dict(results, published=dataclasses.asdict(pub) if pub else None)
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(results, method))
    s = results["scores"]
    title = (f"{results['dataset']} {results['split']}, protocol {results['protocol']}, "
             f"{results['views']['text']}: mIoU {_pct(s['miou'])}")  # fmt: skip
    visualize.iou_bar_chart(
        paths["chart"],
        s["classes"],
        [None if v is None else 100 * v for v in s["iou"]],
        published=pub.per_class if pub and pub.per_class else None,
        title=title,
        published_label=pub.label if pub else "published",
    )
    return paths


def default_out_dir(checkpoint, dataset: str, protocol: str, views: inference.Views) -> Path:
    """eval/<checkpoint name>/<dataset>_<protocol>[_flip][_ms] under the working folder."""
    tag = f"{dataset}_{protocol}" + ("_flip" if views.flip else "")
    tag += "_ms" if views.scales != (1.0,) else ""
    return Path("eval") / Path(os.path.abspath(checkpoint)).name / tag


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m msjax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="weights folder (metadata.json + variables/)"
    )
    p.add_argument(
        "--dataset", required=True, help="cityscapes, nthu-CITY (rome, rio, ...) or synthetic"
    )
    p.add_argument("--data-dir", required=True, help="folder given to msjax.prepare --data-dir")
    p.add_argument("--protocol", default="original", choices=PROTOCOLS)
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated input scales to average")
    p.add_argument("--split", default=None, help="default: val (Cityscapes), test (NTHU)")
    p.add_argument("--input-size", default=DEFAULT_INPUT_SIZE, help="WxH fed to the network")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--precision", default=inference.DEFAULT_PRECISION, choices=inference.PRECISIONS,
                   help="'highest' float32 (default) or 'default' (TF32 on GPUs)")  # fmt: skip
    p.add_argument("--method", default=None, choices=published.METHODS,
                   help="paper row to compare with (default: the paper's best)")  # fmt: skip
    p.add_argument("--out", default=None, help="report folder (default eval/CKPT/TAG)")
    p.add_argument("--save-predictions", action="store_true",
                   help="also write Cityscapes label-id PNGs to OUT/predictions")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = p.parse_args(argv)
    from msjax.prepare import _quiet_native_stderr
    from msjax.weights import WeightsError

    try:
        # TensorFlow (the data pipeline) prints C++ banners at import that no flag silences.
        with _quiet_native_stderr():
            from msjax.data import builders, pipeline  # noqa: F401
        try:
            views = inference.Views(flip=args.flip, scales=inference.parse_scales(args.scales))
        except ValueError as e:
            raise EvaluateError(str(e)) from None
        out = Path(args.out or default_out_dir(args.checkpoint, args.dataset, args.protocol, views))
        results = evaluate(
            args.checkpoint,
            args.dataset,
            args.data_dir,
            protocol=args.protocol,
            views=views,
            split=args.split,
            input_size=args.input_size,
            batch_size=args.batch_size,
            predictions_dir=out / "predictions" if args.save_predictions else None,
            precision=args.precision,
            progress=not args.no_progress,
        )
        paths = write_report(results, out, args.method)
    except (EvaluateError, DataError, WeightsError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results, args.method))
    print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
