"""Shared fixtures: small folders of real images made from the built-in sample."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """A labelled folder of 120 real MNIST digits (12 per class) as PNGs in class sub-folders."""
    from sslvit.data import load_sample

    sample = load_sample("train")
    root = tmp_path_factory.mktemp("digits")
    labels = np.asarray(sample.labels)
    for cls in range(10):
        (root / str(cls)).mkdir()
        for j, i in enumerate(np.flatnonzero(labels == cls)[:12]):
            Image.fromarray(sample.array[i]).save(root / str(cls) / f"{j:03d}.png")
    return root


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when this clone has none."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs the real data in {path} (present in CI, absent in a fresh clone)")
    return path
