"""Labelling single images of any size with a weights folder, and writing the pictures.

For every image (any size, PNG or JPEG) `predict_files` writes, under OUT with the images'
relative folders kept:
- NAME_color.png: the predicted classes in the Cityscapes palette;
- NAME_overlay.png: the colours blended over the image;
- NAME_labelIds.png (with label_ids): official Cityscapes label ids, one channel, at the
  image's own size: the benchmark's submission format.

The network sees the image resized bicubic (as the data sets are prepared) to the input
size: a height (default 512, width keeping the aspect ratio: 2048x1024 Cityscapes frames
become 1024x512, the training size), an exact WxH, or `native`. The main head's logits are
then upsampled to the image's own size (`msjax.evaluation.inference`), as the `full`
evaluation protocol does. Normalisation comes from the checkpoint's metadata.
`python -m msjax.predict` is the command.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import numpy as np

from msjax.data.normalize import normalize
from msjax.errors import ConfigError, DataError
from msjax.evaluation import inference, visualize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
        raise DataError(
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
    raise ConfigError(f"--input-size {text!r}: expected a height (512), WxH (1024x512) or native.")


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
    """An image file as uint8 RGB [H, W, 3]; DataError if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e} (unreadable or truncated file).") from e


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
