"""Input-pipeline benchmark: the msjax training stream next to a PIL loader, in one run.

    .venv/bin/python scripts/bench_input.py [--images 48] [--steps 60] [--workdir DIR]

Builds fake raw GTA5 (1914x1052) and Cityscapes (2048x1024) folders of photo-like images
(a rendered street scene, upscaled, plus sensor noise so PNGs compress like photographs),
prepares them at the training resolutions (GTA5 1280x720, Cityscapes 1024x512), then times:

- msjax: `make_train_stream` for both domains (decode, flip, blur, normalise in tf.data), as
  msjax runs it and once with tf.data's model-based autotuning on (msjax turns it off);
- PIL, the original's per-image work on the raw files: open, convert, map the label ids with
  a loop over the id table, resize (bicubic / nearest), flip, GaussianBlur, BGR mean subtract;
  once in one process and once with a process pool as wide as the machine (the original's
  DataLoader workers).

Prints images/s (two images per training step: one source, one target) and ms per step. The
goal is a stream that never starves the GPU step at its target time (docs/performance.md).
"""

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msjax.data import labels, synthetic  # noqa: E402

GTA5_RAW, CITY_RAW = (1914, 1052), (2048, 1024)
GTA5_TRAIN, CITY_TRAIN = (1280, 720), (1024, 512)
MEAN_BGR = np.array((104.00698793, 116.66876762, 122.67891434), np.float32)


def _photo(index: int, size) -> tuple[np.ndarray, np.ndarray]:
    """A street scene at `size` (W, H) with photo-like noise, and Cityscapes label ids."""
    image, train = synthetic.render("target", "bench", index, 128, 256)
    image = Image.fromarray(image).resize(size, Image.BICUBIC)
    noise = np.random.default_rng(index).normal(0, 8, (size[1], size[0], 3))
    image = np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8)
    to_id = {t: i for i, t in labels.CITYSCAPES_ID_TO_TRAIN_ID.items()}
    ids = np.vectorize(lambda t: to_id.get(int(t), 0))(train).astype(np.uint8)
    ids = np.asarray(Image.fromarray(ids).resize(size, Image.NEAREST))
    return image, ids


def make_raw(root: Path, n: int) -> None:
    """Fake GTA5 and Cityscapes raw folders in their download layouts."""
    for i in range(n):
        image, ids = _photo(i, GTA5_RAW)
        (root / "gta5" / "images").mkdir(parents=True, exist_ok=True)
        (root / "gta5" / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "gta5" / "images" / f"{i:05d}.png")
        Image.fromarray(ids).save(root / "gta5" / "labels" / f"{i:05d}.png")
        image, ids = _photo(1000 + i, CITY_RAW)
        key = f"bench_{i:06d}_000019"
        for top, suffix, arr in (
            ("leftImg8bit", "leftImg8bit", image),
            ("gtFine", "gtFine_labelIds", ids),
        ):
            folder = root / "cityscapes" / top / "train" / "bench"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / f"{key}_{suffix}.png")


def pil_example(paths) -> tuple[np.ndarray, np.ndarray]:
    """The original's per-image training work (its GTA5/Cityscapes dataset __getitem__)."""
    image_path, label_path, size = paths
    image = Image.open(image_path).convert("RGB")
    label = np.asarray(Image.open(label_path), np.float32)
    mapped = 255 * np.ones(label.shape, np.float32)
    for raw_id, train_id in labels.CITYSCAPES_ID_TO_TRAIN_ID.items():
        mapped[label == raw_id] = train_id
    label = Image.fromarray(mapped.astype(np.uint8))
    if random.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    image = image.resize(size, Image.BICUBIC)
    label = label.resize(size, Image.NEAREST)
    if random.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=random.random()))
    array = np.asarray(image, np.float32)[:, :, ::-1] - MEAN_BGR
    return array.transpose(2, 0, 1).copy(), np.asarray(label, np.int64)


def bench_pil(root: Path, n: int, steps: int, workers: int) -> float:
    """Images/s of the PIL loader over `steps` (source, target) pairs."""
    gta = [
        (
            root / "gta5" / "images" / f"{i:05d}.png",
            root / "gta5" / "labels" / f"{i:05d}.png",
            GTA5_TRAIN,
        )
        for i in range(n)
    ]
    city_dir = root / "cityscapes"
    city = [
        (
            city_dir / "leftImg8bit/train/bench" / f"bench_{i:06d}_000019_leftImg8bit.png",
            city_dir / "gtFine/train/bench" / f"bench_{i:06d}_000019_gtFine_labelIds.png",
            CITY_TRAIN,
        )
        for i in range(n)
    ]
    jobs = [job for k in range(steps) for job in (gta[k % n], city[k % n])]
    start = time.perf_counter()
    if workers == 1:
        for job in jobs:
            pil_example(job)
    else:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap(pil_example, jobs, chunksize=1):
                pass
    return len(jobs) / (time.perf_counter() - start)


def bench_msjax(data_dir: Path, steps: int, warmup: int = 5, model_autotuning=False) -> float:
    """Images/s of the msjax source + target training streams.

    model_autotuning: run them with tf.data's model-based autotuning, which msjax turns off
      (`pipeline._without_model_autotuning`, docs/reliability.md), to measure what that costs.
    """
    from msjax.data import pipeline

    switch_off = pipeline._without_model_autotuning
    if model_autotuning:
        pipeline._without_model_autotuning = lambda ds: ds
    common = dict(data_dir=str(data_dir), batch_size=1, seed=0)
    src = pipeline.make_train_stream(
        dict(common, dataset="gta5", config="1280x720"), process_index=0, process_count=1
    )
    tgt = pipeline.make_train_stream(
        dict(common, dataset="cityscapes", config="1024x512"), process_index=0, process_count=1
    )
    try:  # the streams build their tf.data pipelines on the first batch
        for _ in range(warmup):
            next(src), next(tgt)
        start = time.perf_counter()
        for _ in range(steps):
            next(src), next(tgt)
        return 2 * steps / (time.perf_counter() - start)
    finally:
        src.close()
        tgt.close()
        pipeline._without_model_autotuning = switch_off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48, help="fake images per data set")
    parser.add_argument("--steps", type=int, default=60, help="timed (source, target) steps")
    parser.add_argument("--workdir", default=None, help="keep the fake data here")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="msjax_bench_"))
    if not (root / "gta5").is_dir():
        print(f"writing {args.images} fake raw images per data set to {root} ...", flush=True)
        make_raw(root, args.images)
    from msjax.data import preparation

    # The fake folders are not the original's files: their own splits (every pair in train).
    preparation.prepare_one(
        "gta5", "1280x720", root / "tfds", raw_dir=root / "gta5", split_lists="none"
    )
    preparation.prepare_one(
        "cityscapes", "1024x512", root / "tfds", raw_dir=root / "cityscapes", split_lists="none"
    )
    cores = os.cpu_count() or 1
    rows = [("msjax tf.data stream", bench_msjax(root / "tfds", args.steps))]
    rows.append(
        (
            "msjax, with tf.data's autotuning model",
            bench_msjax(root / "tfds", args.steps, model_autotuning=True),
        )
    )
    rows.append(("PIL, 1 process", bench_pil(root, args.images, max(args.steps // 3, 4), 1)))
    if cores > 1:
        rows.append((f"PIL, {cores} processes", bench_pil(root, args.images, args.steps, cores)))
    print(f"\nTraining input, GTA5 1280x720 + Cityscapes 1024x512, {cores} CPU cores")
    print("| loader | images/s | ms per source+target step |")
    print("|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {2000 / rate:.1f} |")


if __name__ == "__main__":
    main()
