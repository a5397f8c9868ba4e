"""NIfTI files as arrays: one float32 `[X, Y, Z, T]` per file, in the file's scaled units.

nibabel (`sslvit[nifti]`) is imported only when a file needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslvit.data.readers import UnreadableImageError, optional_module

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_name(name: str | Path) -> bool:
    """Whether a file name ends in `.nii` or `.nii.gz` (case-insensitive)."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> np.ndarray:
    """A NIfTI file as float32 `[X, Y, Z, T]`, scaled by its scl_slope/scl_inter.

    A 2-D image gets Z = T = 1; axes after the third are flattened into T, so a 4-D series
    (time points, diffusion directions) becomes T separate 3-D volumes.
    """
    path = Path(path)
    nibabel = optional_module("nibabel", "nifti", path)
    try:
        data = nibabel.load(path).get_fdata(dtype=np.float32)
    except Exception as err:
        raise UnreadableImageError(f"{path}: cannot read NIfTI ({err})") from None
    if data.ndim < 2:
        raise UnreadableImageError(f"{path}: a NIfTI of shape {data.shape} has no image")
    shape = data.shape + (1,) * max(0, 3 - data.ndim)
    return data.reshape(*shape[:3], -1)
