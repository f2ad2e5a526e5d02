"""Training samples are made the way the server sees images: whole views in batches of one shape, native crops on
the JPEG grid, CIFAR images; each sample a function of (seed, stream, index) alone."""

import json
from dataclasses import asdict, replace

import pytest
import torch

from detector.corruptions import CORRUPTIONS, KIND_TYPES, SAMPLE_KINDS
from detector.model import CROP_TYPES, FINE_TYPES
from detector.preprocessing import CROP_SIZE, GLOBAL_SIDE
from training.corpus import BuiltPhoto, load_built
from training.photo_data import (
    CLEAN_JITTER_KINDS,
    CROP_KINDS,
    CifarSamples,
    CropSamples,
    PhotoSet,
    SharedSourceError,
    ViewBatches,
    WholeViewSamples,
    check_split_by_group,
    clean_variants,
    corrupt_or_not,
    group_draw_weights,
    jitter_clean,
    load_split,
    photo_group,
    photo_sizes,
    sample_rng,
    shared_groups,
)


@pytest.fixture(scope="module")
def photos(mini_corpus) -> PhotoSet:
    return PhotoSet.load(str(mini_corpus), load_built(mini_corpus, "train"))


def test_whole_views_of_a_batch_share_one_shape_and_labels_match_kinds(photos):
    samples = WholeViewSamples(photos, seed=0)
    for requests in ViewBatches(6, 8, seed=0):
        items = [samples[request] for request in requests]
        assert len({tuple(item[0].shape) for item in items}) == 1
        assert tuple(items[0][0].shape[-2:]) == requests[0].view_shape
        assert min(requests[0].view_shape) <= GLOBAL_SIDE
        for _, label, kind, type_index in items:
            assert label == int(kind > 0) and type_index == KIND_TYPES[kind]


def test_samples_are_a_function_of_seed_and_index(photos):
    first, again, other = WholeViewSamples(photos, 0), WholeViewSamples(photos, 0), WholeViewSamples(photos, 1)
    requests = next(iter(ViewBatches(1, 4, seed=0)))
    assert all(torch.equal(first[r][0], again[r][0]) for r in requests)
    assert any(not torch.equal(first[r][0], other[r][0]) for r in requests)


def test_clean_jitter_changes_clean_views_only_and_less_than_the_mildest_damage(photos):
    plain, jittered = WholeViewSamples(photos, 0, clean_jitter=0.0), WholeViewSamples(photos, 0, clean_jitter=1.0)
    changed = 0
    for requests in ViewBatches(4, 8, seed=0):
        for request in requests:
            before, after = plain[request], jittered[request]
            assert before[1:] == after[1:]  # the label, kind and type never move
            if before[1]:
                assert torch.equal(before[0], after[0])  # corrupted samples replay exactly
            else:
                changed += not torch.equal(before[0], after[0])
    assert changed > 0
    image = photos.shrunk[0][:, :96, :96].contiguous()
    mildest = max(
        (CORRUPTIONS[kind](image, 1, seed).float() - image.float()).abs().mean()
        for kind in CLEAN_JITTER_KINDS
        for seed in range(4)
    )
    shifts = [(jitter_clean(image, sample_rng(seed, 0, 0)).float() - image.float()).abs().mean() for seed in range(20)]
    assert max(shifts) < mildest and sum(shift > 0 for shift in shifts) > 10


def test_crops_are_native_size_and_only_the_crop_heads_damage(photos):
    samples = CropSamples(photos, seed=0)
    kinds = set()
    for index in range(40):
        crop, label, kind, type_index = samples[index]
        assert crop.shape == (3, CROP_SIZE, CROP_SIZE) and label == int(kind > 0)
        kinds.add(SAMPLE_KINDS[kind])
        family = "clean" if kind == 0 else CORRUPTIONS[SAMPLE_KINDS[kind]].family
        assert CROP_TYPES[type_index] == family and family in ("clean", *FINE_TYPES)
    assert kinds - {"clean"} <= set(CROP_KINDS) and len(kinds) > 2


def test_blurred_crops_are_soft_at_native_resolution(photos):
    """Blur is made at the whole photo's radius, so a blurred crop has clearly less detail than a clean one:
    the crop head can see it (an 80-pixel patch blurred at its own size would barely change)."""
    samples = CropSamples(photos, seed=0)
    energy: dict[str, list[float]] = {"clean": [], "blur": []}
    for index in range(120):
        crop, _, kind, _ = samples[index]
        family = "clean" if kind == 0 else CORRUPTIONS[SAMPLE_KINDS[kind]].family
        if family in energy:
            grey = crop.mean(dim=0)
            energy[family].append(float((grey[:, 1:] - grey[:, :-1]).abs().mean()))
    assert min(len(values) for values in energy.values()) >= 5, energy
    assert sum(energy["blur"]) / len(energy["blur"]) < 0.6 * sum(energy["clean"]) / len(energy["clean"])


def test_training_can_leave_out_the_subtle_severities():
    """`--min-severity`: corrupted samples draw from [min, 5]; `corrupt_or_not` alone draws the table's whole range
    (the temperatures are fitted on it)."""
    drawn = []
    exposure = replace(CORRUPTIONS["exposure"], apply=lambda image, stops: drawn.append(stops) or image)
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)

    def stops_drawn(**severity) -> list[float]:
        drawn.clear()
        for index in range(200):
            corrupt_or_not(image, ["exposure"], {"exposure": exposure}, sample_rng(0, 0, index), **severity)
        return drawn[:]

    assert min(stops_drawn(min_severity=2.0)) >= exposure.value(2)
    assert min(stops_drawn()) < exposure.value(2), "the default keeps severities 1-2"


def test_cifar_samples_stay_32_pixels(images):
    samples = CifarSamples(images, seed=0)
    items = [samples[index] for index in range(20)]
    assert all(item[0].shape == (3, 32, 32) for item in items) and {item[1] for item in items} == {0, 1}


def test_clean_photos_are_judged_at_every_size_they_reach():
    assert photo_sizes(4000, 3000) == [640, 1024, 1600, 4000]
    assert photo_sizes(1200, 800) == [640, 1024]
    assert photo_sizes(466, 350) == [466], "a small photo stands at its own size"


def test_clean_variants_are_jpegs_at_both_qualities(mini_corpus):
    photo = load_built(mini_corpus, "val")[0]
    variants = clean_variants(str(mini_corpus / photo.file))
    assert len(variants) == 2 * len(photo_sizes(photo.width, photo.height))
    assert all(data[:2] == b"\xff\xd8" for data in variants)


def built(photo_id: str, split: str, package: str, group: str = "", tags: tuple[str, ...] = ()) -> BuiltPhoto:
    source = f"debian:{package}=1.0:usr/share/{photo_id}.jpg"
    return BuiltPhoto(
        photo_id, split, f"{split}/{photo_id}.jpg", 640, 480, 92, "0" * 16, False, source, "", group, tags
    )


def test_a_photos_group_is_its_photographer_where_known_else_its_package():
    assert photo_group(built("a", "train", "kphotoalbum", group="kphotoalbum:Ann")) == "kphotoalbum:Ann"
    assert photo_group(built("b", "train", "@vladmandic/face-api")) == "@vladmandic/face-api"


def test_a_corpus_split_by_photo_is_refused_and_one_split_by_source_is_not():
    by_source = [built("a", "train", "p"), built("b", "val", "q"), built("c", "test", "p", group="r")]
    check_split_by_group(by_source)
    by_photo = [*by_source, built("d", "test", "q")]
    assert shared_groups(by_photo) == {"q": ["val", "test"]}
    with pytest.raises(SharedSourceError, match="q in val, test"):
        check_split_by_group(by_photo)


def test_splits_load_only_from_a_corpus_split_by_source_less_a_folds_group(tmp_path):
    photos = [built("a", "train", "p"), built("b", "train", "q"), built("c", "val", "r")]
    (tmp_path / "manifest.json").write_text(json.dumps([asdict(photo) for photo in photos]))
    assert [p.id for p in load_split(tmp_path, "train")] == ["a", "b"]
    assert [p.id for p in load_split(tmp_path, "train", exclude_groups=["q"])] == ["a"]
    (tmp_path / "manifest.json").write_text(json.dumps([asdict(p) for p in [*photos, built("d", "test", "p")]]))
    with pytest.raises(SharedSourceError):
        load_split(tmp_path, "val")


def test_a_groups_share_of_photo_draws_goes_as_its_photos_to_the_exponent():
    photos = [built(f"big{i}", "train", "big") for i in range(9)] + [built("alone", "train", "small")]
    assert group_draw_weights(photos, 1.0) is None  # per photo: plain uniform draws, as before
    for exponent, big_share in ((0.0, 1 / 2), (0.5, 3 / 4)):
        weights = group_draw_weights(photos, exponent)
        assert weights.sum() == pytest.approx(1.0)
        assert weights[:9].sum() == pytest.approx(big_share) and len(set(weights[:9])) == 1
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * len(photos)
    balanced = PhotoSet(images, images, group_draw_weights(photos, 0.0))
    draws = [balanced.draw(sample_rng(0, 0, index)) for index in range(2000)]
    assert 0.45 < draws.count(9) / len(draws) < 0.55  # the one photo of its group: half the draws, not a tenth
