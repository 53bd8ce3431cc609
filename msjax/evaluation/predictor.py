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
import warnings
from pathlib import Path

import numpy as np

from msjax.data.normalize import normalize
from msjax.errors import ConfigError, DataError
from msjax.evaluation import inference, visualize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The largest image predict takes (8192x8192): the image, its label map, colour map and
# overlay are held whole (the upsampled probabilities are made in bands,
# inference.make_banded_predict_fn; docs/performance.md has the memory figures); larger
# images are refused from their header, before any work.
MAX_IMAGE_PIXELS = 8192 * 8192


def find_images(pattern: str, exclude=None) -> tuple[list[Path], Path]:
    """The images a PATH_OR_GLOB names, and the root their output paths are relative to.

    Args:
      pattern: an image file, a folder (searched recursively) or a glob ('**' allowed).
      exclude: a folder whose images are left out (the output folder: a second run must not
        take the first run's pictures for inputs).

    Returns:
      (sorted image paths, common root folder).
    """
    if not str(pattern).strip():
        raise ConfigError("--images is empty: give an image file, a folder or a quoted glob.")
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
    if exclude is not None:
        skip = Path(exclude).absolute()
        outside = [p for p in found if not p.absolute().is_relative_to(skip)]
        if found and not outside:
            raise ConfigError(
                f"--images {pattern!r}: every image it names is under --out {skip}, and "
                "images under --out are never inputs (they may be an earlier run's "
                "pictures). Give an --out outside the images."
            )
        found = outside
    if not found:
        raise DataError(
            f"--images {pattern!r} matches no image ({', '.join(IMAGE_SUFFIXES)} files); give "
            "an image file, a folder, or a quoted glob such as 'leftImg8bit/val/*/*.png'."
        )
    return found, root


def output_stems(images: list[Path], root: Path) -> list[Path]:
    """Each image's output path under OUT, without suffix; DataError if two would share one.

    Cityscapes file names end in _leftImg8bit; the outputs say what they hold instead, and
    a.png and a.jpg in one folder would both write a_color.png.
    """
    stems, seen = [], {}
    for path in images:
        stem = path.relative_to(root).with_suffix("")
        stem = stem.with_name(stem.name.removesuffix("_leftImg8bit"))
        if stem in seen:
            raise DataError(
                f"{seen[stem]} and {path} would both be written as OUT/{stem}_color.png; "
                "rename one, or predict them into different --out folders."
            )
        seen[stem] = path
        stems.append(stem)
    return stems


def check_images(images: list[Path]) -> list[tuple[int, int]]:
    """Reads every image's header before any work; returns their (width, height).

    Raises:
      DataError: a file that is no image, or an image of more than MAX_IMAGE_PIXELS.
    """
    from PIL import Image

    sizes = []
    for path in images:
        try:
            with warnings.catch_warnings():  # PIL's bomb warning; the limit below says more
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
            with img:
                w, h = img.size
        except Image.DecompressionBombError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e} (not an image, or damaged).") from e
        if w * h > MAX_IMAGE_PIXELS:
            raise DataError(
                f"image {path} is {w}x{h} ({w * h / 1e6:.1f} Mpx), more than the "
                f"{MAX_IMAGE_PIXELS / 1e6:.1f} Mpx (8192x8192) msjax.predict takes; downscale "
                "it first (or cut it into tiles)."
            )
        sizes.append((w, h))
    return sizes


def check_network_sizes(images, sizes, input_size, views) -> None:
    """ConfigError before any work if an image would feed the network too many pixels."""
    text = "native" if input_size is None else (
        str(input_size[1]) if input_size[0] == "height" else "x".join(map(str, input_size[1]))
    )  # fmt: skip
    for path, size in zip(images, sizes, strict=True):
        what = f"--input-size {text} for {path} ({size[0]}x{size[1]})"
        inference.check_network_size(network_size(size, input_size), views, what)


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
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # as a photo viewer shows a rotated JPEG
            if img.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits, not clip
                img = Image.fromarray((np.asarray(img, np.uint32) >> 8).astype(np.uint8))
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
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
            self._fns[(h, w)] = self._make_fn((h, w))
        return self._fns[(h, w)](self.variables, x)

    def _make_fn(self, hw):
        """The predict function of one output size: banded when the probabilities at that
        size would take more than inference.BAND_BYTES."""
        probabilities = hw[0] * hw[1] * self.num_classes * 4 * (2 if self._views.flip else 1)
        if probabilities > inference.BAND_BYTES:
            return inference.make_banded_predict_fn(self.model, hw, self._views, self._precision)
        fn = inference.make_predict_fn(self.model, hw, self._views, self._precision)
        return lambda variables, x: np.asarray(fn(variables, x)[0][0])


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

    Every argument and image header is checked before the model loads; the pictures are
    written under a staging folder and merged into out_dir only when all are done
    (`msjax.outputs.Staging`), so a failure half-way leaves out_dir as it was.

    Returns:
      The written paths (under out_dir).
    """
    from tqdm import tqdm

    from msjax import cli, outputs, ownership

    if not (isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"--alpha {alpha}: the overlay colour weight must be in [0, 1].")
    out_dir = outputs.check_output_folder(out_dir, "--out")
    images, root = find_images(pattern, exclude=out_dir)
    stems = output_stems(images, root)
    check_network_sizes(images, check_images(images), input_size, views)
    cli.start_jax()
    identity = {"checkpoint": os.path.abspath(os.path.expanduser(os.fspath(checkpoint))),
                "input_size": input_size and list(input_size), "flip": views.flip,
                "scales": list(views.scales)}  # fmt: skip
    suffixes = ("color", "overlay", *(["labelIds"] if label_ids else []))
    clashes = [stem.with_name(f"{stem.name}_{sfx}.png") for stem in stems for sfx in suffixes]
    owner = dict(what="--out", identity=identity, clashes=clashes)
    # Written under a staging folder, merged into OUT file by file only once every image is
    # done: a failure half-way leaves OUT as it was.
    with ownership.use_folder(out_dir, "msjax.predict", **owner):
        predictor = Predictor(checkpoint, views, input_size, precision)
        with outputs.Staging(out_dir, merge=True) as staging:
            written = []
            bar = tqdm(images, desc="predict", unit="img", disable=not progress, file=sys.stderr)
            for path, stem in zip(bar, stems, strict=True):
                image = read_image(path)
                pred = predictor(image)
                written += write_outputs(
                    staging.path / stem, image, pred, predictor.num_classes, alpha, label_ids
                )
    return [staging.final(p) for p in written]
