"""Scene statistics beside the network's features: what a view's light and colour are, as numbers the head reads."""

import torch

from detector.photometry import STATISTICS, scene_statistics
from detector.preprocessing import normalise


def stats_of(rgb: tuple[int, int, int], size: tuple[int, int] = (160, 213)) -> torch.Tensor:
    image = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, *size)
    return scene_statistics(normalise(image)[None])[0]


def test_one_row_of_finite_statistics_per_view_at_any_view_size():
    views = normalise(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    found = scene_statistics(views)
    assert found.shape == (3, STATISTICS) and bool(torch.isfinite(found).all())
    assert torch.allclose(stats_of((40, 90, 200)), stats_of((40, 90, 200), (32, 48)), atol=1e-5)


def test_the_histograms_ends_and_clipping_tell_dark_from_bright():
    black, grey, white = stats_of((0, 0, 0)), stats_of((128, 128, 128)), stats_of((255, 255, 255))
    assert bool((black[:7] < grey[:7]).all() and (grey[:7] < white[:7]).all()), "luminance percentiles"
    assert black[7] == 4 and white[8] == 4 and grey[7] == grey[8] == 0, "shares clipped at black, at white"


def test_colour_cast_and_saturation_are_seen():
    neutral, warm = stats_of((128, 128, 128)), stats_of((200, 128, 60))
    assert warm[10] > neutral[10], "chroma"
    assert warm[12] > 0 > warm[13], "red over green, blue under green"


def test_detail_raises_the_gradient_energy():
    flat = normalise(torch.full((1, 3, 64, 64), 120, dtype=torch.uint8))
    busy = normalise(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert bool((scene_statistics(busy)[0, -2:] > scene_statistics(flat)[0, -2:]).all())
