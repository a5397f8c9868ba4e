"""Augmented views: any channel count, small images, and per-sample reproducible randomness."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sslvit.data.arrays import ArrayImages
from sslvit.data.views import SeededViews, eval_transform, train_transform


def _images(n=6, c=3, h=20, w=24, labels=None):
    pixels = np.random.default_rng(0).uniform(0, 255, size=(n, c, h, w)).astype(np.float32)
    return ArrayImages(pixels, labels=labels)


@pytest.mark.parametrize("c", [1, 3, 13])
def test_views_have_requested_size_for_any_channel_count(c):
    image = torch.rand(c, 20, 24) * 1000
    mean, std = [500.0] * c, [290.0] * c
    assert train_transform(16, mean, std)(image).shape == (c, 16, 16)
    assert eval_transform(16, mean, std)(image).shape == (c, 16, 16)


def test_small_image_is_upscaled():
    image = torch.rand(3, 10, 10)
    view = train_transform(32, [0.5] * 3, [0.25] * 3, scale=(0.5, 1.0))(image)
    assert view.shape == (3, 32, 32) and torch.isfinite(view).all()


def test_eval_transform_normalises_per_channel():
    image = torch.tensor([10.0, 200.0]).view(2, 1, 1).expand(2, 40, 30).clone()
    out = eval_transform(8, mean=[10.0, 100.0], std=[1.0, 50.0])(image)
    assert torch.allclose(out[0], torch.zeros(8, 8), atol=1e-4)
    assert torch.allclose(out[1], torch.full((8, 8), 2.0), atol=1e-4)


def test_bad_statistics_are_rejected():
    with pytest.raises(ValueError, match="one per channel"):
        train_transform(16, [0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="<= 0"):
        eval_transform(16, [0.0], [0.0])


def test_seeded_views_repeat_per_epoch_and_index():
    views = SeededViews(
        _images(labels=[0, 1, 2, 0, 1, 2]), train_transform(16, [128] * 3, [64] * 3), 7
    )
    view, label, index = views[(2, 4)]
    assert label == 1 and index == 4 and view.shape == (3, 16, 16)
    assert torch.equal(views[(2, 4)][0], view)
    assert not torch.equal(views[(3, 4)][0], view)
    assert torch.equal(views[4][0], views[(0, 4)][0])
    other_seed = SeededViews(views.images, views.transform, seed=8)
    assert not torch.equal(other_seed[(2, 4)][0], view)


def test_identical_images_get_different_views():
    same = ArrayImages(np.repeat(np.random.default_rng(1).uniform(size=(1, 3, 20, 24)), 4, 0))
    views = SeededViews(same, train_transform(16, [0.5] * 3, [0.3] * 3), seed=0)
    outputs = [views[(0, i)][0] for i in range(4)]
    assert all(not torch.equal(outputs[0], other) for other in outputs[1:])
    assert views[0][1] == -1


def test_seeded_views_leave_global_rng_alone():
    views = SeededViews(_images(), train_transform(16, [128] * 3, [64] * 3), seed=0)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    views[(1, 2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_workers_produce_the_same_views_as_the_main_process():
    views = SeededViews(_images(), train_transform(16, [128] * 3, [64] * 3), seed=3)
    keys = [(5, i) for i in (4, 0, 3, 1, 5, 2)]
    loader = DataLoader(views, batch_size=2, sampler=keys, num_workers=2)
    batches = list(loader)
    got = torch.cat([batch[0] for batch in batches])
    order = torch.cat([batch[2] for batch in batches]).tolist()
    assert order == [i for _, i in keys]
    assert torch.equal(got, torch.stack([views[key][0] for key in keys]))
