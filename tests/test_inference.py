"""How one image's answer is made from its views (whole image + tiles), in-process."""

import torch

from detector.corruptions import TYPES
from detector.inference import FINE_TYPES, combine_views, prediction_body
from detector.preprocessing import TILES_PER_SIDE

TILES = TILES_PER_SIDE**2


def type_rows(count: int, name: str, probability: float) -> torch.Tensor:
    """`count` type distributions giving `name` this probability and the rest to "clean"."""
    rows = torch.zeros(count, len(TYPES))
    rows[:, TYPES.index(name)] = probability
    rows[:, TYPES.index("clean")] += 1 - probability
    return rows


def test_a_small_image_is_its_single_view():
    binary, types = torch.tensor([[0.3, 0.7]]), type_rows(1, "blur", 0.7)
    combined = combine_views(binary, types)
    assert torch.equal(combined[0], binary[0]) and torch.equal(combined[1], types[0])


def test_noisy_tiles_flag_an_image_whose_thumbnail_looks_clean():
    binary = torch.tensor([[0.9, 0.1]] * (1 + 2 * TILES))
    types = torch.cat([type_rows(1, "noise", 0.05), type_rows(TILES, "noise", 0.9), type_rows(TILES, "noise", 0.1)])
    corrupted, combined_types = combine_views(binary, types)
    assert float(corrupted[1]) == float(torch.tensor(0.9)) and TYPES[int(combined_types.argmax())] == "noise"


def test_a_few_odd_tiles_do_not_flip_the_answer():
    binary = torch.tensor([[0.9, 0.1]] * (1 + TILES))
    tiles = torch.cat([type_rows(3, "compression", 0.95), type_rows(TILES - 3, "compression", 0.02)])
    corrupted, _ = combine_views(binary, torch.cat([type_rows(1, "clean", 1.0), tiles]))
    assert float(corrupted[1]) == float(torch.tensor(0.1)), "the whole view decides"


def test_tiles_do_not_vote_on_blur_brightness_or_occlusion():
    binary = torch.tensor([[0.8, 0.2]] * (1 + TILES))
    for name in set(TYPES) - set(FINE_TYPES) - {"clean"}:
        corrupted, _ = combine_views(binary, torch.cat([type_rows(1, "clean", 1.0), type_rows(TILES, name, 0.99)]))
        assert float(corrupted[1]) == float(torch.tensor(0.2)), name


def test_prediction_body_adds_the_type_only_when_asked():
    probabilities = torch.tensor([0.25, 0.75])
    assert set(prediction_body(probabilities)) == {"label", "confidence", "probs"}
    body = prediction_body(probabilities, type_rows(1, "noise", 0.6)[0])
    assert body["label"] == "corrupted" and body["confidence"] == 0.75
    assert list(body["corruption_type"]) == list(TYPES) and body["corruption_type"]["noise"] == 0.6
