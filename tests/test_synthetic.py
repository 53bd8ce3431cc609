"""The synthetic domain-shift data: determinism, classes, and a shift that is real but learnable."""

import numpy as np
import pytest

from msjax import prepare
from msjax.data import builders, datasets, labels, pipeline, synthetic

C = synthetic.CLASS_IDS


def _miou(pred, gt):
    ious = []
    for c in C:
        union = np.count_nonzero((pred == c) | (gt == c))
        if union:
            ious.append(np.count_nonzero((pred == c) & (gt == c)) / union)
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def scenes():
    return {
        "src_train": synthetic.render_batch("source", "train", 60, 48, 96),
        "src_val": synthetic.render_batch("source", "val", 30, 48, 96),
        "tgt_val": synthetic.render_batch("target", "val", 30, 48, 96),
    }


def test_deterministic():
    for style in synthetic.STYLES:
        a = synthetic.render(style, "train", 5, 64, 128)
        b = synthetic.render(style, "train", 5, 64, 128)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    differ = [
        synthetic.render("source", "train", 6, 64, 128),
        synthetic.render("source", "val", 5, 64, 128),
        synthetic.render("source", "train", 5, 64, 128, seed=1),
    ]
    base = synthetic.render("source", "train", 5, 64, 128)
    assert all(not np.array_equal(d[1], base[1]) for d in differ)


def test_classes_are_cityscapes_train_ids(scenes):
    names = {labels.CLASS_NAMES_19[c] for c in C}
    assert names == {"road", "sidewalk", "building", "vegetation", "sky", "person", "car"}
    for images, labs in scenes.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (48, 96, 3)
        assert set(np.unique(labs)) == set(C)  # every class occurs, no ignore


def test_shift_is_hard_for_appearance(scenes):
    """A per-pixel colour classifier fit on the source collapses on the target."""
    images, labs = scenes["src_train"]
    means = np.stack([images[labs == c].mean(0) for c in C])

    def predict(x):
        d = ((x[..., None, :].astype(np.float32) - means) ** 2).sum(-1)
        return np.asarray(C)[d.argmin(-1)]

    on_source = _miou(predict(scenes["src_val"][0]), scenes["src_val"][1])
    on_target = _miou(predict(scenes["tgt_val"][0]), scenes["tgt_val"][1])
    assert on_source > 0.9 and on_target < 0.3, (on_source, on_target)


def test_layout_is_shared(scenes):
    """Where classes sit (sky up, road down) transfers: structure self-training can use."""
    labs = scenes["src_train"][1]
    prior = np.asarray(C)[np.stack([(labs == c).mean(0) for c in C]).argmax(0)]
    on_source = _miou(np.broadcast_to(prior, scenes["src_val"][1].shape), scenes["src_val"][1])
    on_target = _miou(np.broadcast_to(prior, scenes["tgt_val"][1].shape), scenes["tgt_val"][1])
    assert on_target > 0.8 * on_source > 0.2, (on_source, on_target)


def test_object_statistics_differ():
    _, src = synthetic.render_batch("source", "train", 40, 48, 96)
    _, tgt = synthetic.render_batch("target", "train", 40, 48, 96)
    share = lambda lab, c: np.mean(lab == c)
    assert share(tgt, synthetic.PERSON) > 1.3 * share(src, synthetic.PERSON)
    assert share(src, synthetic.CAR) > 1.3 * share(tgt, synthetic.CAR)


def test_prepared_through_cli_and_pipeline(tmp_path, capsys):
    args = ["synthetic", "--data-dir", str(tmp_path), "--size", "128x64"]
    assert prepare.main(args + ["--max-examples", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "synthetic-source 128x64" in out and "synthetic-target 128x64" in out
    assert "synthetic-fog-3 128x64" in out and "synthetic-noise-1 128x64" in out
    for domain in ("source", "target", "fog-3", "noise-1"):
        name, size = f"synthetic-{domain}", "128x64"
        builder = builders.load_builder(name, size, tmp_path)
        real = builders.builder_class("cityscapes")(data_dir=str(tmp_path / "u"), config="1024x512")
        assert builder.info.features.keys() == real.info.features.keys()
        batch = next(
            pipeline.make_train_stream(
                dict(dataset=name, size=size, data_dir=str(tmp_path), batch_size=2),
                process_index=0,
                process_count=1,
            )
        )
        assert batch["image"].shape == (2, 64, 128, 3)
        assert set(np.unique(batch["label"])) <= set(C)
    with pytest.raises(ValueError, match="source"):
        synthetic.render("painting", "train", 0)


def test_corrupted_domains_share_their_scenes_and_grade_the_corruption():
    """Every corrupted domain shows the same scenes; a higher severity degrades them more."""
    labels_of = {d: synthetic.render(d, "val", 3, 48, 96)[1] for d in synthetic.DOMAINS[2:]}
    for label in labels_of.values():
        np.testing.assert_array_equal(label, labels_of["fog-1"])
    source_scene = synthetic.render("source", "val", 3, 48, 96)[1]
    assert not np.array_equal(source_scene, labels_of["fog-1"])  # scenes of their own
    grey = synthetic._FOG_GREY
    top = [synthetic.render(f"fog-{s}", "val", 3, 48, 96)[0][:8].astype(float) for s in (1, 2, 3)]
    distance = [np.abs(t - grey).mean() for t in top]
    assert distance[0] > 1.2 * distance[1] > 1.44 * distance[2], distance
    # The noise family draws the same noise at every severity, scaled: the differences to
    # severity 1 are (almost) proportional, clipping aside.
    noisy = [synthetic.render(f"noise-{s}", "val", 3, 48, 96)[0].astype(float) for s in (1, 2, 3)]
    d2, d3 = (noisy[1] - noisy[0]).ravel(), (noisy[2] - noisy[0]).ravel()
    assert np.corrcoef(d2, d3)[0, 1] > 0.9 and d3.std() > 1.5 * d2.std()


def test_rare_classes_stay_rare_in_every_domain():
    for domain in ("source", "target", "fog-2", "noise-2"):
        _, labs = synthetic.render_batch(domain, "train", 40, 48, 96)
        assert 0.002 < np.mean(labs == synthetic.PERSON) < 0.04, domain
        assert 0.002 < np.mean(labs == synthetic.CAR) < 0.05, domain


def test_domain_names():
    assert datasets.get("synthetic-fog-2").domain == "fog-2"
    assert datasets.get("synthetic-noise-3").builder == "synthetic_noise_3"
    generated = {d.domain for d in datasets.DATASETS.values() if d.generated}
    assert generated == set(synthetic.DOMAINS)
    for bad in ("fog-4", "haze-1", "fog"):
        with pytest.raises(ValueError, match="fog-1"):
            synthetic.parse_domain(bad)
