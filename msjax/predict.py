"""`python -m msjax.predict`: images -> colour label maps, overlays and Cityscapes label ids.

    python -m msjax.predict --checkpoint weights/gta5_iw_multi \
        --images '~/cityscapes/leftImg8bit/val/*/*.png' --out predictions/ [--label-ids] \
        [--input-size 512|WxH|native] [--flip] [--scales 0.75,1,1.25] [--alpha 0.5]

For every image (any size, PNG or JPEG) it writes, under OUT with the images' relative folders
kept:
- NAME_color.png: the predicted classes in the Cityscapes palette;
- NAME_overlay.png: the colours blended over the image;
- NAME_labelIds.png (with --label-ids): official Cityscapes label ids, one channel, at the
  image's own size: the benchmark's submission format.

The network sees the image resized bicubic (as the data sets are prepared) to
`--input-size`: a height (default 512, width keeping the aspect ratio: 2048x1024 Cityscapes
frames become 1024x512, the training size), an exact WxH, or `native`. The main head's
logits are then upsampled to the image's own size (msjax.inference), as the `full`
evaluation protocol does. Normalisation comes from the checkpoint's metadata.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np

from msjax import inference, visualize
from msjax.data.normalize import normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class PredictError(ValueError):
    """A user-facing problem with the prediction request (paths, flags, unreadable files)."""


def find_images(pattern: str) -> tuple[list[Path], Path]:
    """The images a PATH_OR_GLOB names, and the root their output paths are relative to.

    Args:
      pattern: an image file, a folder (searched recursively) or a glob ('**' allowed).

    Returns:
      (sorted image paths, common root folder).
    """
    path = Path(os.path.expanduser(pattern))
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        root = path
    else:
        found = [Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))]
        found = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        root = Path(os.path.commonpath([p.parent for p in found])) if found else Path(".")
    if not found:
        raise PredictError(
            f"--images {pattern!r} matches no image ({', '.join(IMAGE_SUFFIXES)} files); give "
            "an image file, a folder, or a quoted glob such as 'leftImg8bit/val/*/*.png'."
        )
    return found, root


def parse_input_size(text: str):
    """'512' -> ('height', 512); '1024x512' -> ('size', (1024, 512)); 'native' -> None."""
    text = str(text).strip().lower()
    if text == "native":
        return None
    try:
        if "x" in text:
            w, h = (int(v) for v in text.split("x"))
            if w > 0 and h > 0:
                return ("size", (w, h))
        elif int(text) > 0:
            return ("height", int(text))
    except ValueError:
        pass
    raise PredictError(f"--input-size {text!r}: expected a height (512), WxH (1024x512) or native.")


def network_size(image_wh: tuple[int, int], input_size) -> tuple[int, int]:
    """(width, height) the network sees for an image of `image_wh` under `parse_input_size`."""
    w, h = image_wh
    if input_size is None:
        return w, h
    kind, value = input_size
    if kind == "size":
        return value
    return max(1, round(w * value / h)), value


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; PredictError if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise PredictError(f"cannot read image {path}: {e} (unreadable or truncated file).") from e


class Predictor:
    """A loaded checkpoint that labels single images of any size.

    Attributes:
      model, variables: the network and its weights.
      num_classes: classes of the checkpoint.
      normalization: the input normalisation the weights expect.
    """

    def __init__(
        self,
        checkpoint,
        views=inference.SINGLE_VIEW,
        input_size=("height", 512),
        precision: str = inference.DEFAULT_PRECISION,
    ):
        from msjax import weights

        self.model, self.variables = weights.load(os.fspath(checkpoint))
        metadata = weights.read_metadata(os.fspath(checkpoint))
        self.num_classes = int(metadata["num_classes"])
        self.normalization = metadata.get("input_normalization", "caffe_bgr")
        self.input_size = input_size
        self._views = views
        self._precision = precision
        self._fns = {}  # target (h, w) -> jitted predict function

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Class ids [H, W] (int32) of a uint8 RGB image [H, W, 3], at the image's size."""
        from PIL import Image

        h, w = image.shape[:2]
        nw, nh = network_size((w, h), self.input_size)
        x = image
        if (nw, nh) != (w, h):
            x = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
        x = normalize(x.astype(np.float32), self.normalization)[None]
        if (h, w) not in self._fns:
            self._fns[(h, w)] = inference.make_predict_fn(
                self.model, (h, w), self._views, self._precision
            )
        labels, _ = self._fns[(h, w)](self.variables, x)
        return np.asarray(labels[0])


def write_outputs(
    out_stem: Path, image, pred, num_classes: int, alpha: float = 0.5, label_ids: bool = False
) -> list[Path]:
    """Writes the colour map, the overlay and optionally the label-id PNG of one image.

    Args:
      out_stem: output path without suffix (e.g. OUT/frankfurt/frankfurt_000000_000294).
      image: uint8 RGB [H, W, 3].
      pred: class ids [H, W] of the checkpoint's subset.
      num_classes: the subset.
      alpha: overlay colour weight.
      label_ids: also write official Cityscapes ids.

    Returns:
      The written paths.
    """
    from PIL import Image

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    color = visualize.colorize(pred, num_classes)
    outputs = {
        "color": color,
        "overlay": visualize.overlay(image, color, alpha),
    }
    if label_ids:
        outputs["labelIds"] = visualize.to_cityscapes_ids(pred, num_classes)
    paths = []
    for suffix, array in outputs.items():
        path = out_stem.with_name(f"{out_stem.name}_{suffix}.png")
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def predict_files(
    checkpoint,
    pattern: str,
    out_dir,
    *,
    views=inference.SINGLE_VIEW,
    input_size=("height", 512),
    alpha: float = 0.5,
    label_ids: bool = False,
    precision: str = inference.DEFAULT_PRECISION,
    progress: bool = True,
) -> list[Path]:
    """Labels every image a path or glob names and writes its pictures under out_dir.

    Returns:
      The written paths.
    """
    from tqdm import tqdm

    images, root = find_images(pattern)
    predictor = Predictor(checkpoint, views, input_size, precision)
    out_dir = Path(out_dir)
    written = []
    for path in tqdm(images, desc="predict", unit="img", disable=not progress, file=sys.stderr):
        image = read_image(path)
        pred = predictor(image)
        stem = out_dir / path.relative_to(root).with_suffix("")
        # Cityscapes file names end in _leftImg8bit; the outputs say what they hold instead.
        stem = stem.with_name(stem.name.removesuffix("_leftImg8bit"))
        written += write_outputs(stem, image, pred, predictor.num_classes, alpha, label_ids)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m msjax.predict", description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="weights folder (metadata.json + variables/)"
    )
    p.add_argument("--images", required=True, help="image file, folder, or quoted glob")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--input-size", default="512", help="network input: height, WxH or native")
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated input scales to average")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight")
    p.add_argument("--label-ids", action="store_true", help="also write Cityscapes label-id PNGs")
    p.add_argument("--precision", default=inference.DEFAULT_PRECISION, choices=inference.PRECISIONS,
                   help="'highest' float32 (default) or 'default' (TF32 on GPUs)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = p.parse_args(argv)
    from msjax.weights import WeightsError

    try:
        try:
            views = inference.Views(flip=args.flip, scales=inference.parse_scales(args.scales))
        except ValueError as e:
            raise PredictError(str(e)) from None
        written = predict_files(
            args.checkpoint,
            args.images,
            args.out,
            views=views,
            input_size=parse_input_size(args.input_size),
            alpha=args.alpha,
            label_ids=args.label_ids,
            precision=args.precision,
            progress=not args.no_progress,
        )
    except (PredictError, WeightsError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
