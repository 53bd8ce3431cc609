"""The tf.data pipeline: determinism, resume, per-host sharding, augmentation, normalisation."""

import hashlib

import numpy as np
import pytest

from msjax.data import augment as aug
from msjax.data import labels, pipeline, preparation
from msjax.errors import DataError
from tests.helpers import make_cityscapes

tf = pipeline.tf
N_EXAMPLES = 25  # odd on purpose: hosts get 8/8/9 examples, eval batches need padding


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("prepared")
    preparation.prepare_one("synthetic-source", "128x64", d, max_examples=N_EXAMPLES)
    raw = tmp_path_factory.mktemp("raw") / "cityscapes"
    make_cityscapes(raw)
    preparation.prepare_one("cityscapes", "1024x512", d, raw_dir=raw, split_lists="none")
    return d


def _cfg(data_dir, **kw):
    base = dict(dataset="synthetic-source", size="128x64", batch_size=4, seed=3)
    return {**base, "data_dir": str(data_dir), **kw}


def _stream(data_dir, start_step=0, index=0, count=1, **kw):
    return pipeline.make_train_stream(
        _cfg(data_dir, **kw), start_step=start_step, process_index=index, process_count=count
    )


def _digest(image) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_batch_contract(data_dir):
    batch = next(_stream(data_dir))
    assert set(batch) == {"image", "label"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 64, 128, 3)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4, 64, 128)
    assert set(np.unique(batch["label"])) <= {0, 1, 2, 8, 10, 11, 13, 255}


def test_same_seed_and_step_same_batch(data_dir):
    a, b = _stream(data_dir), _stream(data_dir)
    for _ in range(8):  # crosses the epoch boundary (6 steps per epoch)
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_resume_sees_the_same_batches(data_dir):
    full = [next(s) for s in [_stream(data_dir)] for _ in range(9)]
    for start in (4, 6, 7):
        resumed = _stream(data_dir, start_step=start)
        assert resumed.step == start
        for k in range(start, 9):
            x = next(resumed)
            np.testing.assert_array_equal(x["image"], full[k]["image"])
            np.testing.assert_array_equal(x["label"], full[k]["label"])


def _epoch_order(stream):
    return [_digest(im) for _ in range(stream.steps_per_epoch) for im in next(stream)["image"]]


def test_epochs_and_seeds_change_the_order(data_dir):
    s = _stream(data_dir, flip=False, blur=False)
    e0, e1 = _epoch_order(s), _epoch_order(s)
    assert e0 != e1
    # 25 examples, 6 batches of 4 per epoch: 24 of the 25 examples in every epoch.
    assert len(set(e0) & set(e1)) >= 23 and len(set(e0)) == 24
    other = _epoch_order(_stream(data_dir, seed=4, flip=False, blur=False))
    assert other != e0


def _ids_by_digest(data_dir):
    """Example id of each (unaugmented) image digest, from the evaluation stream."""
    stream = pipeline.make_eval_stream(
        _cfg(data_dir, split="train", batch_size=5), process_index=0, process_count=1, with_ids=True
    )
    return {
        _digest(im): i.decode() for b in stream for im, i in zip(b["image"], b["id"], strict=True)
    }


def _epochs(stream, n):
    """The example digests of the next n epochs (batch size 1)."""
    return [
        [_digest(next(stream)["image"][0]) for _ in range(stream.steps_per_epoch)] for _ in range(n)
    ]


def test_an_epoch_is_a_fresh_permutation_of_the_whole_split(data_dir):
    """As the original's DataLoader(shuffle=True): every example once per epoch, new order."""
    ids = _ids_by_digest(data_dir)
    s = _stream(data_dir, batch_size=1, flip=False, blur=False)
    assert s.steps_per_epoch == s.full_steps_per_epoch == N_EXAMPLES
    epochs = _epochs(s, 3)
    for epoch in epochs:
        assert sorted(ids[d] for d in epoch) == sorted(ids.values())
    assert epochs[0] != epochs[1] != epochs[2]
    # Not the stored order, and not runs of neighbours in it (the old shard+buffer shuffle
    # kept consecutive steps in one Cityscapes city): few consecutive pairs stay adjacent.
    stored = sorted(ids.values())
    rank = {d: stored.index(ids[d]) for d in ids}
    adjacent = sum(
        abs(rank[a] - rank[b]) == 1 for a, b in zip(epochs[0][:-1], epochs[0][1:], strict=True)
    )
    assert adjacent <= 8, adjacent


def test_epoch_steps_restart_with_the_first_batches_of_a_fresh_permutation(data_dir):
    """A source stream restarting with each (shorter) target epoch, as the original's zip."""
    full = _stream(data_dir, batch_size=1, flip=False, blur=False)
    short = _stream(data_dir, batch_size=1, flip=False, blur=False, epoch_steps=5)
    assert short.steps_per_epoch == 5 and short.full_steps_per_epoch == N_EXAMPLES
    whole, firsts = _epochs(full, 3), _epochs(short, 3)
    # Epoch k of the short stream is the first 5 of epoch k's permutation of the whole split.
    assert firsts == [epoch[:5] for epoch in whole]
    assert len({frozenset(e) for e in firsts}) == 3  # each epoch draws anew
    # Resuming inside and at the start of a short epoch gives the same batches.
    flat = [d for e in firsts for d in e]
    for start in (3, 5, 12):
        resumed = _stream(data_dir, batch_size=1, flip=False, blur=False, epoch_steps=5,
                          start_step=start)  # fmt: skip
        assert [_digest(next(resumed)["image"][0]) for _ in range(15 - start)] == flat[start:]


def test_trainer_epoch_rule():
    """Adaptation: both streams turn epochs after the shorter split; source-only: <= 5000."""
    from msjax.configlib import base_config
    from msjax.training.run import epoch_steps

    c = base_config()
    assert epoch_steps(c, {"source": 12403, "target": 2975}) == {"source": 2975, "target": 2975}
    assert epoch_steps(c, {"source": 2975, "target": 3200}) == {"source": 2975, "target": 2975}
    assert epoch_steps(c, {"source": 12403}) == {"source": 5000}
    assert epoch_steps(c, {"source": 2975}) == {"source": 2975}
    c.epochs.shared, c.epochs.source_only_max_steps = False, 0
    assert epoch_steps(c, {"source": 12403, "target": 2975}) == {"source": 12403, "target": 2975}
    assert epoch_steps(c, {"source": 12403}) == {"source": 12403}


def test_train_sharding_is_disjoint(data_dir):
    """Hosts read disjoint slices (8/8/9 examples) and turn epochs together (8 steps)."""
    seen = []
    for index in range(3):
        s = _stream(data_dir, index=index, count=3, batch_size=1, flip=False, blur=False)
        assert s.num_examples in (8, 9) and s.steps_per_epoch == N_EXAMPLES // 3
        epoch = {_digest(next(s)["image"][0]) for _ in range(s.steps_per_epoch)}
        assert len(epoch) == s.steps_per_epoch  # no repeat within an epoch
        seen.append(epoch)
    assert len(set().union(*seen)) == sum(len(h) for h in seen) == 3 * (N_EXAMPLES // 3)


def test_eval_sharding_visits_every_example_once(data_dir):
    ids, batches_per_host = [], []
    for index in range(3):
        stream = pipeline.make_eval_stream(
            _cfg(data_dir, split="train", batch_size=5),
            process_index=index,
            process_count=3,
            with_ids=True,
        )
        batches = list(stream)
        batches_per_host.append(len(batches))
        assert len(batches) == len(stream)
        for b in batches:
            assert b["mask"].dtype == bool and b["image"].shape[0] == 5
            ids += [i.decode() for i in b["id"][b["mask"]]]
            assert (b["label"][~b["mask"]] == 255).all()
    assert len(set(batches_per_host)) == 1  # hosts step together
    assert len(ids) == N_EXAMPLES == len(set(ids))


def test_eval_stream_is_unaugmented_and_repeatable(data_dir):
    stream = pipeline.make_eval_stream(
        _cfg(data_dir, split="val", batch_size=8), process_index=0, process_count=1
    )
    a, b = list(stream), list(stream)
    assert len(a) == 4 and a[-1]["mask"].sum() == 1
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_cityscapes_subset_and_normalisation(data_dir):
    base = dict(dataset="cityscapes", size="1024x512", data_dir=str(data_dir), batch_size=2)
    raw = pipeline.make_eval_stream(dict(base, num_classes=19), process_index=0, process_count=1)
    sub = pipeline.make_eval_stream(dict(base, num_classes=13), process_index=0, process_count=1)
    tv = pipeline.make_eval_stream(
        dict(base, normalization="torchvision_rgb"), process_index=0, process_count=1
    )
    for r, s, t in zip(raw, sub, tv, strict=True):
        np.testing.assert_array_equal(s["label"], labels.subset_lut(13)[r["label"]])
        assert s["label"][s["label"] != 255].max() <= 12
        rgb = pipeline.denormalize(r["image"], "caffe_bgr")
        np.testing.assert_array_equal(pipeline.denormalize(t["image"], "torchvision_rgb"), rgb)
        assert r["image"].shape == (2, 512, 1024, 3)


def test_normalize_values():
    rgb = np.array([[[10.0, 20.0, 30.0]]], np.float32)
    caffe = pipeline.normalize(rgb, "caffe_bgr")
    np.testing.assert_allclose(
        caffe[0, 0], [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434], rtol=1e-6
    )
    tv = pipeline.normalize(rgb, "torchvision_rgb")
    np.testing.assert_allclose(tv[0, 0, 0], (10 / 255 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(pipeline.normalize(tf.constant(rgb), "caffe_bgr").numpy(), caffe)
    for kind in pipeline.NORMALIZATIONS:
        img = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
        back = pipeline.denormalize(pipeline.normalize(img.astype(np.float32), kind), kind)
        np.testing.assert_array_equal(back, img)
    with pytest.raises(ValueError, match="caffe_bgr.*torchvision_rgb"):
        pipeline.normalize(rgb, "imagenet")


def _example(seed=0, h=24, w=40):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    label = rng.integers(0, 19, (h, w)).astype(np.int32)
    return image, label


AUG_SETTINGS = [
    dict(),
    dict(flip_prob=1.0, blur_prob=0.0),
    dict(flip_prob=0.0, blur_prob=1.0),
    dict(scale_range=(0.5, 1.5), crop_hw=(16, 32)),
]


@pytest.mark.parametrize("settings", AUG_SETTINGS)
def test_augment_eager_equals_tf_data(settings):
    image, label = _example()
    seeds = np.array([[7, i] for i in range(12)], np.int64)
    eager = [aug.augment(image, label, s, **settings) for s in seeds]
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: aug.augment(image, label, s, **settings), num_parallel_calls=4
    )
    for (ei, el), (gi, gl) in zip(eager, ds.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(ei.numpy(), gi)
        np.testing.assert_array_equal(el.numpy(), gl)


def test_augment_behaviour():
    image, label = _example(1)
    flips = 0
    for i in range(64):
        out_i, out_l = aug.augment(image, label, [1, i], blur_prob=0.0)
        flipped = np.array_equal(out_l.numpy(), label[:, ::-1])
        assert flipped or np.array_equal(out_l.numpy(), label)
        np.testing.assert_array_equal(out_i.numpy(), image[:, ::-1] if flipped else image)
        flips += flipped
    assert 20 < flips < 44  # p = 0.5
    blurred, same_label = aug.augment(image, label, [2, 0], flip_prob=0.0, blur_prob=1.0)
    np.testing.assert_array_equal(same_label.numpy(), label)
    assert blurred.numpy().std() < image.std()  # a blur lowers the variance of noise
    np.testing.assert_allclose(aug.gaussian_blur(image, 0.0).numpy(), image)
    flat = np.full((9, 9, 3), 77.0, np.float32)
    np.testing.assert_allclose(aug.gaussian_blur(flat, 0.9).numpy(), flat, rtol=1e-5)


def test_scale_and_crop_fields(data_dir):
    s = _stream(data_dir, random_scale=(0.75, 1.5), crop_size=(96, 48))
    batch = next(s)
    assert batch["image"].shape == (4, 48, 96, 3) and batch["label"].shape == (4, 48, 96)


def test_config_errors(data_dir):
    with pytest.raises(DataError, match="unknown data config fields \\['batchsize'\\]"):
        _stream(data_dir, batchsize=2)
    with pytest.raises(DataError, match="num_classes"):
        _stream(data_dir, num_classes=7)
    with pytest.raises(DataError, match="normalization"):
        _stream(data_dir, normalization="bgr")
    with pytest.raises(DataError, match="no split 'test'"):
        _stream(data_dir, split="test")
    with pytest.raises(DataError, match="not prepared at size 256x128"):
        _stream(data_dir, size="256x128")
    with pytest.raises(DataError, match="data_dir is not set"):
        pipeline.make_train_stream(
            {**_cfg(data_dir), "data_dir": None}, process_index=0, process_count=1
        )
    with pytest.raises(DataError, match="fewer than batch_size"):
        _stream(data_dir, batch_size=30)
    with pytest.raises(DataError, match="epoch_steps=7 is more than a full pass"):
        _stream(data_dir, epoch_steps=7)  # 6 batches of 4
    with pytest.raises(DataError, match="epoch_steps=-1"):
        _stream(data_dir, epoch_steps=-1)


def test_config_from_dataclass_and_defaults(data_dir):
    cfg = pipeline.DataConfig.create(_cfg(data_dir))
    assert pipeline.DataConfig.create(cfg, seed=9).seed == 9
    # Without explicit process arguments, jax's process index/count are used.
    assert pipeline.make_train_stream(cfg).num_examples == N_EXAMPLES


def test_tensorflow_sees_no_gpu():
    assert tf.config.get_visible_devices("GPU") == []
