"""Two-view augmentations: channel-aware colour operations, reproducible per sample."""

import pytest
import torch

from sslvit.data import ChannelJitter, MultiView, SeededViews, ViewAugment, augmented_view
from sslvit.data.arrays import ArrayImages
from sslvit.methods.common import TwoViewConfig, two_views


def _ops(transform) -> list[str]:
    names = []
    for op in transform.transforms:
        names.append(type(op).__name__)
        inner = getattr(op, "ops", None) or getattr(op, "transforms", None)
        if isinstance(inner, list):
            names += [type(o).__name__ for o in inner]
        elif inner is not None:
            names += _ops(inner)
    return names


STRONG = ViewAugment(jitter_prob=1.0, grayscale_prob=0.5, blur_prob=1.0, solarize_prob=1.0)


@pytest.mark.parametrize("chans", [1, 3, 13])
def test_any_channel_count_gives_views_of_the_right_shape(chans):
    t = augmented_view(16, [100.0] * chans, [30.0] * chans, STRONG)
    view = t(torch.rand(chans, 20, 24) * 255)
    assert view.shape == (chans, 16, 16) and torch.isfinite(view).all()


def test_colour_ops_only_where_they_fit():
    rgb = _ops(augmented_view(16, [0.5] * 3, [0.2] * 3, STRONG))
    assert "ColorJitter" in rgb and "RandomGrayscale" in rgb and "RandomSolarize" in rgb
    assert "ChannelJitter" not in rgb
    bands = _ops(augmented_view(16, [0.5] * 13, [0.2] * 13, STRONG))
    assert "ChannelJitter" in bands and "GaussianBlur" in bands
    assert not {"ColorJitter", "RandomGrayscale", "RandomSolarize"} & set(bands)
    grey = _ops(augmented_view(16, [0.5], [0.2], STRONG))
    assert "ChannelJitter" in grey and "RandomSolarize" in grey and "ColorJitter" not in grey


def test_rgb_colour_jitter_keeps_16_bit_units():
    # a 16-bit photo: colour operations run in [0, 1] of the image's maximum, then scale back
    image = torch.rand(3, 32, 32) * 60000 + 1000
    aug = ViewAugment(crop_scale=(1.0, 1.0), hflip=False, jitter_prob=1.0, grayscale_prob=0.0)
    view = augmented_view(32, [0.0] * 3, [1.0] * 3, aug)(image)
    assert view.max() > 30000  # not clipped to 1 or 255
    assert view.max() <= image.max() * 1.0001


def test_channel_jitter_changes_each_band_on_its_own():
    torch.manual_seed(0)
    image = torch.rand(13, 8, 8) + 1.0
    out = ChannelJitter(0.4, 0.4, p=1.0)(image)
    ratios = out.mean(dim=(1, 2)) / image.mean(dim=(1, 2))
    assert ratios.std() > 0.01  # different brightness per band
    assert torch.equal(ChannelJitter(0.4, 0.4, p=0.0)(image), image)


def test_two_views_differ_and_repeat_per_seed():
    images = ArrayImages(torch.rand(4, 3, 20, 20).numpy() * 255)
    transform = two_views(TwoViewConfig(), 16, [120.0] * 3, [60.0] * 3)
    assert isinstance(transform, MultiView)
    views = SeededViews(images, transform, seed=3)
    (v1, v2), _, _ = views[(0, 1)]
    (w1, w2), _, _ = views[(0, 1)]
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.equal(v1, v2)
    (x1, _), _, _ = views[(1, 1)]
    assert not torch.equal(v1, x1)


def test_hue_and_saturation_survive_bicubic_overshoot():
    # a hard-edged image: bicubic upscaling overshoots below 0, where HSV maths gives NaN
    image = torch.zeros(3, 6, 6)
    image[0, :, :3] = 255.0
    image[2, 3:, :] = 255.0
    aug = ViewAugment(crop_scale=(0.05, 0.2), jitter_prob=1.0, brightness=0.8, contrast=0.8,
                      saturation=0.8, hue=0.2)  # fmt: skip
    views = SeededViews(
        ArrayImages(image[None].numpy()), augmented_view(32, [0.0] * 3, [1.0] * 3, aug), 0
    )
    for epoch in range(40):
        view, _, _ = views[(epoch, 0)]
        assert torch.isfinite(view).all(), epoch
