"""The input pipeline: prepared TFDS data sets -> deterministic numpy batches.

Training streams are pure functions of (config, seed, step):
- each host reads a contiguous, disjoint slice of the split (every example on exactly one host);
- every epoch is a fresh permutation of that whole slice, drawn from (seed, host, epoch), as the
  original's shuffling DataLoader; an epoch may use only its first `epoch_steps` batches (the
  trainer sets them so that a source stream restarts with each target epoch, docs/data.md);
- records are read by their byte offsets in the prepared TFRecord files, so any order costs
  the same and a stream started at step k reads nothing before it;
- every example's augmentation is keyed by (seed, host, epoch, position), with stateless ops;
- a stream started at step k yields exactly the batches an uninterrupted run would have
  yielded from step k on.

Batches are dicts of numpy arrays: `image` float32 [B, H, W, 3], normalised for the weights
(`normalize`), and `label` int32 [B, H, W] in the requested class subset (255 = ignore).
Evaluation streams visit every example once and pad the last batch, adding `mask` bool [B].
TensorFlow only ever sees the CPU.
"""

import dataclasses
import math
import os
import struct
from collections.abc import Iterator, Mapping

import numpy as np

from msjax.data import builders, datasets, hide_gpus_from_tensorflow, labels
from msjax.data.augment import augment
from msjax.data.normalize import NORMALIZATIONS, check_normalization, denormalize, normalize
from msjax.errors import DataError

tf = hide_gpus_from_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402

__all__ = [
    "DataConfig",
    "NORMALIZATIONS",
    "denormalize",
    "full_epoch_steps",
    "make_eval_stream",
    "make_sharded_train_stream",
    "make_train_stream",
    "normalize",
]


# The map functions use tf.cond/tf.where explicitly; AutoGraph would only re-parse their
# source (and warn about closures and lambdas).
_no_autograph = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What one stream reads and how it augments it.

    Attributes:
      dataset: a data set name (msjax.data.datasets), e.g. "gta5", "nthu-rome".
      size: its prepared size, e.g. "1280x720", or "full", which keeps native sizes (they
        vary in GTA5: batch them only with batch_size 1 or a crop).
      split: split name ("train", "val", "test").
      batch_size: examples per batch on this host.
      seed: base seed of shuffling and augmentation.
      num_classes: class subset of the labels: 19, 16 or 13.
      normalization: "caffe_bgr" or "torchvision_rgb" (from the weights' metadata).
      flip: random horizontal flip, p=0.5.
      blur: random Gaussian blur, radius U[0, 1), p=0.5.
      random_scale: (min, max) random rescale factor, or None (the original: None).
      crop_size: (width, height) random crop after scaling, or None (the original: None).
      epoch_steps: batches per epoch: each epoch is a fresh permutation of the host's slice,
        of which the first `epoch_steps` batches are used; 0: all of them (a full pass).
      data_dir: folder given to `python -m msjax.prepare --data-dir`.
    """

    dataset: str
    size: str
    split: str = "train"
    batch_size: int = 1
    seed: int = 0
    num_classes: int = 19
    normalization: str = "caffe_bgr"
    flip: bool = True
    blur: bool = True
    random_scale: tuple[float, float] | None = None
    crop_size: tuple[int, int] | None = None
    epoch_steps: int = 0
    data_dir: str | None = None

    @classmethod
    def create(cls, cfg=None, **overrides) -> "DataConfig":
        """Builds a DataConfig from a DataConfig, a mapping or a ConfigDict, plus overrides.

        Args:
          cfg: None, a DataConfig, a Mapping, or any object with `to_dict()` (ConfigDict).
          **overrides: fields to set on top.

        Returns:
          A validated DataConfig.
        """
        if isinstance(cfg, DataConfig):
            fields = dataclasses.asdict(cfg)
        elif cfg is None:
            fields = {}
        elif hasattr(cfg, "to_dict"):
            fields = dict(cfg.to_dict())
        elif isinstance(cfg, Mapping):
            fields = dict(cfg)
        else:
            raise DataError(f"data config must be a DataConfig or a mapping, got {type(cfg)}.")
        fields.update(overrides)
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - valid)
        if unknown:
            raise DataError(f"unknown data config fields {unknown}; valid: {sorted(valid)}.")
        out = cls(**fields)
        out.validate()
        return out

    def validate(self) -> None:
        """Checks names and values; raises DataError naming the field."""
        datasets.check_size(datasets.get(self.dataset), self.size)
        if self.num_classes not in labels.VALID_NUM_CLASSES:
            raise DataError(
                f"data.num_classes={self.num_classes}; valid: {list(labels.VALID_NUM_CLASSES)}."
            )
        try:
            check_normalization(self.normalization)
        except ValueError as e:
            raise DataError(f"data.normalization: {e}") from None
        if not self.data_dir:
            raise DataError(
                "data.data_dir is not set; give the folder passed to "
                "`python -m msjax.prepare --data-dir`."
            )
        if self.batch_size < 1:
            raise DataError(f"data.batch_size={self.batch_size} must be at least 1.")
        if not isinstance(self.epoch_steps, int) or self.epoch_steps < 0:
            raise DataError(f"data.epoch_steps={self.epoch_steps!r} must be an integer >= 0.")


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} not in [0, {process_count}).")
    return process_index, process_count


def _split_size(builder, split: str) -> int:
    splits = builder.info.splits
    if split not in splits:
        raise DataError(
            # The data set's name as commands spell it (builder names use '_' for '-').
            f"{builder.name.replace('_', '-')}/{builder.builder_config.name} has no split "
            f"{split!r}; "
            f"prepared splits: {sorted(splits)}."
        )
    return splits[split].num_examples


def _host_slice(builder, split: str, index: int, count: int) -> tuple[str, int, int]:
    """The contiguous slice of a split this host reads: (split spec, size, total size)."""
    total = _split_size(builder, split)
    lo, hi = total * index // count, total * (index + 1) // count
    return f"{split}[{lo}:{hi}]", hi - lo, total


def _full_steps(cfg: DataConfig, total: int, count: int) -> int:
    """Batches in a full pass of the smallest of `count` host slices of `total` examples."""
    steps = (total // count) // cfg.batch_size
    if steps == 0:
        raise DataError(
            f"{cfg.dataset}/{cfg.size} split {cfg.split!r} gives each of {count} "
            f"hosts at least {total // count} examples, fewer than batch_size={cfg.batch_size}."
        )
    return steps


def _without_model_autotuning(ds):
    """`ds` without tf.data's model-based autotuning; AUTOTUNE values keep their plain meaning.

    With the autotuning model, destroying an iterator waits for the model's optimisation
    thread, which sleeps between its rounds: closing a stream took seconds (docs/reliability.md
    has the figures). Without it, a map with AUTOTUNE runs as many calls in parallel as the
    machine has cores and a prefetch AUTOTUNE buffer grows when the consumer waits, and
    closing takes milliseconds. The batches are the same either way (deterministic maps).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def full_epoch_steps(cfg, shards: int = 1) -> int:
    """Batches per epoch of a full pass over each of `shards` slices of a training split.

    Args:
      cfg: DataConfig fields (dataset, config, split, batch_size of one shard, data_dir).
      shards: how many slices the split is cut into.

    Returns:
      The smallest slice's size divided by the batch size (what `epoch_steps=0` gives).
    """
    cfg = DataConfig.create(cfg)
    builder = builders.load_builder(cfg.dataset, cfg.size, cfg.data_dir)
    return _full_steps(cfg, _split_size(builder, cfg.split), shards)


def _record_offsets(path: str, count: int) -> tuple[list[tuple[int, int]], int]:
    """(data offset, data length) of the first `count` records of a TFRecord file; its size.

    A TFRecord record is: length (uint64, little-endian), its CRC (4 bytes), the data, the
    data's CRC (4 bytes). Only the 12-byte headers are read: unbuffered for local files
    (a buffered reader would read ahead a buffer per header), through TensorFlow's file
    system for remote ones (gs://...).
    """
    out = []
    local = "://" not in path
    with open(path, "rb", buffering=0) if local else tf.io.gfile.GFile(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size if local else f.size()
        pos = 0
        for _ in range(count):
            f.seek(pos)
            header = f.read(12)
            if len(header) < 12:
                raise DataError(f"{path} ends after {len(out)} records; expected {count}.")
            (length,) = struct.unpack("<Q", header[:8])
            out.append((pos + 12, length))
            pos += 12 + length + 4
    if pos > size:
        raise DataError(f"{path} is truncated ({size} bytes; its records need {pos}).")
    return out, size


def _derive_seed(*words: int) -> int:
    """A 31-bit seed that depends on every word (stable across runs and processes)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0] >> 1)


def _read(builder, split_spec: str):
    """Encoded examples of a split slice, in stored order (evaluation)."""
    read_config = tfds.ReadConfig(try_autocache=False, interleave_cycle_length=1)
    skip = tfds.decode.SkipDecoding()
    return builder.as_dataset(
        split=split_spec,
        shuffle_files=False,
        read_config=read_config,
        decoders={"image": skip, "label": skip},
    )


def _decode(example):
    image = tf.cast(tf.io.decode_png(example["image"], channels=3), tf.float32)
    label = tf.io.decode_png(example["label"], channels=1)[..., 0]
    return image, label


def _finish(image, label, cfg: DataConfig):
    """Subset label ids and normalise the image: the last step of every stream."""
    lut = tf.constant(labels.subset_lut(cfg.num_classes), tf.int32)
    label = tf.gather(lut, tf.cast(label, tf.int32))
    return tf.cast(normalize(image, cfg.normalization), tf.float32), label


class TrainStream(Iterator):
    """Infinite iterator of training batches; `next()` returns the batch of step `self.step`.

    Attributes:
      step: the step of the next batch.
      steps_per_epoch: batches per epoch, equal on every host: `cfg.epoch_steps`, or with 0
        a full pass (the smallest host slice divided by the batch size).
      full_steps_per_epoch: batches of a full pass; the rest of each permutation is dropped.
      num_examples: examples in this host's slice.
      host_split: this host's slice as a split spec, e.g. "train[0:1487]".
    """

    def __init__(self, cfg: DataConfig, start_step: int, process_index: int, process_count: int):
        self.cfg = cfg
        self.builder = builders.load_builder(cfg.dataset, cfg.size, cfg.data_dir)
        self._spec, self.num_examples, total = _host_slice(
            self.builder, cfg.split, process_index, process_count
        )
        # The smallest host slice sets the epoch length, so every host turns epochs together.
        self.full_steps_per_epoch = _full_steps(cfg, total, process_count)
        if cfg.epoch_steps > self.full_steps_per_epoch:
            raise DataError(
                f"data.epoch_steps={cfg.epoch_steps} is more than a full pass of "
                f"{cfg.dataset}/{cfg.size}/{cfg.split} ({self.full_steps_per_epoch} batches "
                f"of {cfg.batch_size} on each of {process_count} hosts)."
            )
        self.steps_per_epoch = cfg.epoch_steps or self.full_steps_per_epoch
        self.step = int(start_step)
        self._iter = None
        self._index = None  # the slice's records by byte offset, read on first use
        self._order_seed = _derive_seed(cfg.seed, process_index, 0)
        crop = cfg.crop_size
        self._aug = dict(
            flip_prob=0.5 if cfg.flip else 0.0,
            blur_prob=0.5 if cfg.blur else 0.0,
            scale_range=tuple(cfg.random_scale) if cfg.random_scale else None,
            crop_hw=(crop[1], crop[0]) if crop else None,
        )
        self._aug_seed = _derive_seed(cfg.seed, process_index, 1)

    @property
    def host_split(self) -> str:
        return self._spec

    def _record_index(self) -> dict:
        """The host slice's records in stored order: file, byte offset, length, footer."""
        if self._index is None:
            names, file_of, offsets, lengths, footers = [], [], [], [], []
            for fi in self.builder.info.splits[self._spec].file_instructions:
                take = fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip
                records, size = _record_offsets(fi.filename, fi.skip + take)
                for offset, length in records[fi.skip :]:
                    file_of.append(len(names))
                    offsets.append(offset)
                    lengths.append(length)
                    footers.append(size - offset - length)
                names.append(fi.filename)
            if len(offsets) != self.num_examples:
                raise DataError(
                    f"{self._spec} of {self.builder.data_dir} holds {len(offsets)} records; "
                    f"its metadata says {self.num_examples}. Prepare it again with --overwrite."
                )
            self._index = dict(
                names=names, file_of=file_of, offsets=offsets, lengths=lengths, footers=footers
            )
        return self._index

    def _positions(self, epoch):
        """(epoch, position, record index) of one epoch's examples (epoch: tf.int64 scalar)."""
        n = self.num_examples
        # A fresh permutation of the whole slice per (seed, host, epoch): a stateless draw, so
        # it is the same in every run and needs no state to resume.
        seed = tf.stack([tf.constant(self._order_seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=seed)
        order = order[: self.steps_per_epoch * self.cfg.batch_size]
        ds = tf.data.Dataset.from_tensor_slices(order).enumerate()
        return ds.map(lambda position, index: (epoch, position, index))

    def _read_records(self, ds):
        """Maps (epoch, position, index) to (epoch, position, encoded record), in order."""
        idx = self._record_index()
        names = tf.constant(idx["names"])
        file_of = tf.constant(idx["file_of"], tf.int64)
        offsets, lengths, footers = (
            tf.constant(idx[k], tf.int64) for k in ("offsets", "lengths", "footers")
        )

        def one(epoch, position, index):
            # One record at a known byte range: a fixed-length read with the bytes before it
            # as "header" and those after it as "footer".
            record = tf.data.FixedLengthRecordDataset(
                tf.gather(names, tf.gather(file_of, index)),
                record_bytes=tf.gather(lengths, index),
                header_bytes=tf.gather(offsets, index),
                footer_bytes=tf.gather(footers, index),
            )
            return record.map(lambda r: (epoch, position, r))

        return ds.interleave(
            one, cycle_length=4, block_length=1, num_parallel_calls=4, deterministic=True
        )

    def dataset(self, start_step: int = 0):
        """The tf.data pipeline of every batch from `start_step` on (epochs chained inside)."""
        cfg = self.cfg
        epoch0, first = divmod(int(start_step), self.steps_per_epoch)
        ds = tf.data.Dataset.range(epoch0, 2**40).flat_map(self._positions)
        # Skipping happens on record indices, before anything is read: resuming is cheap.
        ds = self._read_records(ds.skip(first * cfg.batch_size))
        aug_seed = tf.constant(self._aug_seed, tf.int64)
        epoch_len = tf.constant(self.steps_per_epoch * cfg.batch_size, tf.int64)
        features = {
            "image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.string),
        }

        @_no_autograph
        def load(epoch, position, record):
            example = tf.io.parse_single_example(record, features)
            image, label = _decode(example)
            seed = tf.stack([aug_seed, epoch * epoch_len + position])
            image, label = augment(image, label, seed, **self._aug)
            image, label = _finish(image, label, cfg)
            return {"image": image, "label": label}

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(cfg.batch_size, drop_remainder=True)
        return _without_model_autotuning(ds.prefetch(tf.data.AUTOTUNE))

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = iter(tfds.as_numpy(self.dataset(self.step)))
        batch = next(self._iter)
        self.step += 1
        return batch

    def close(self) -> None:
        """Releases the tf.data iterator now (not at interpreter shutdown, where destroying
        it can block the exit); the next `next()` starts a new one at `self.step`."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None


def make_train_stream(
    cfg,
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    **overrides,
) -> TrainStream:
    """An infinite, resumable stream of training batches for this host.

    Args:
      cfg: DataConfig, mapping or ConfigDict of DataConfig fields.
      start_step: step of the first batch (a resumed run passes its restored step).
      process_index: this host's index (default `jax.process_index()`).
      process_count: number of hosts (default `jax.process_count()`).
      **overrides: DataConfig fields to override.

    Returns:
      A TrainStream; each `next()` gives {'image': float32 [B,H,W,3], 'label': int32 [B,H,W]}.
    """
    cfg = DataConfig.create(cfg, **overrides)
    index, count = _process(process_index, process_count)
    return TrainStream(cfg, start_step, index, count)


class ShardedTrainStream:
    """This process's rows of the global batch: the batches of its data shards, concatenated.

    The training data is split into `shards` host slices (TrainStream's process slices);
    each process reads only its own shards. The global batch at a step is the shards'
    batches in shard order, however many processes read them: with a fixed number of
    shards, 1, 2 or `shards` processes train on the same global batches.

    Attributes:
      cfg, steps_per_epoch, full_steps_per_epoch: as TrainStream (equal for every shard).
      num_examples: examples in this process's shards.
      host_split: this process's slices, e.g. "train[0:12] + train[12:24]".
    """

    def __init__(self, streams: list[TrainStream]):
        self.streams = streams
        self.cfg = streams[0].cfg
        self.steps_per_epoch = streams[0].steps_per_epoch
        self.full_steps_per_epoch = streams[0].full_steps_per_epoch
        self.num_examples = sum(s.num_examples for s in streams)
        self.host_split = " + ".join(s.host_split for s in streams)

    def __iter__(self):
        return self

    def close(self) -> None:
        """Closes every shard's stream (see TrainStream.close)."""
        for stream in self.streams:
            stream.close()

    def __next__(self) -> dict:
        batches = [next(s) for s in self.streams]
        if len(batches) == 1:
            return batches[0]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def make_sharded_train_stream(
    cfg,
    *,
    shards: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    **overrides,
) -> ShardedTrainStream:
    """A training stream of this process's `shards / process_count` data shards.

    Args:
      cfg: DataConfig fields; `batch_size` is the batch of ONE shard.
      shards: how many slices the split is cut into; a multiple of the process count.
      start_step, process_index, process_count, **overrides: as make_train_stream.
    """
    cfg = DataConfig.create(cfg, **overrides)
    index, count = _process(process_index, process_count)
    if shards < 1 or shards % count:
        raise DataError(
            f"data_shards={shards} must be a positive multiple of the number of processes "
            f"({count})."
        )
    per = shards // count
    own = range(index * per, (index + 1) * per)
    return ShardedTrainStream([TrainStream(cfg, start_step, s, shards) for s in own])


def _with_mask(value: bool):
    @_no_autograph
    def attach(example):
        return example, tf.constant(value)

    return attach


class EvalStream:
    """Re-iterable evaluation batches; every host yields `num_batches` batches.

    Attributes:
      num_examples: examples in this host's slice (mask True).
      num_batches: batches per pass, equal on all hosts so collective steps line up.
    """

    def __init__(self, cfg: DataConfig, process_index: int, process_count: int, with_ids: bool):
        self.cfg = cfg
        self.builder = builders.load_builder(cfg.dataset, cfg.size, cfg.data_dir)
        self._spec, self.num_examples, total = _host_slice(
            self.builder, cfg.split, process_index, process_count
        )
        self.num_batches = math.ceil(math.ceil(total / process_count) / cfg.batch_size)
        self._full_spec = cfg.split
        self._with_ids = with_ids

    def dataset(self):
        """The tf.data pipeline of one evaluation pass."""
        cfg = self.cfg
        real = _read(self.builder, self._spec)
        # Padding repeats a real example (so shapes match) with mask False and ignore labels.
        pad_source = real if self.num_examples else _read(self.builder, self._full_spec)
        pad = pad_source.take(1).repeat()
        n_pad = self.num_batches * cfg.batch_size - self.num_examples
        ds = real.map(_with_mask(True)).concatenate(pad.take(n_pad).map(_with_mask(False)))
        with_ids = self._with_ids

        @_no_autograph
        def load(example, mask):
            image, label = _decode(example)
            label = tf.where(mask, label, tf.constant(labels.IGNORE, tf.uint8))
            image, label = _finish(image, label, cfg)
            out = {"image": image, "label": label, "mask": mask}
            if with_ids:
                out["id"] = example["id"]
            return out

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _without_model_autotuning(ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE))

    def __iter__(self):
        return iter(tfds.as_numpy(self.dataset()))

    def __len__(self) -> int:
        return self.num_batches


def make_eval_stream(
    cfg,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    with_ids: bool = False,
    **overrides,
) -> EvalStream:
    """Evaluation batches visiting each example of this host's slice exactly once.

    Args:
      cfg: DataConfig, mapping or ConfigDict (augmentation fields are ignored).
      process_index: this host's index (default `jax.process_index()`).
      process_count: number of hosts (default `jax.process_count()`).
      with_ids: also yield `id` (bytes [B]) for predictions and tests.
      **overrides: DataConfig fields to override.

    Returns:
      An EvalStream yielding {'image', 'label', 'mask' bool [B]}; padded entries have
      mask False and all-ignore labels.
    """
    cfg = DataConfig.create(cfg, **overrides)
    index, count = _process(process_index, process_count)
    return EvalStream(cfg, index, count, with_ids)
