"""Segmentation masks: index PNGs read as class indices, paired with their images by file stem.

A mask holds one class index per pixel. Palette PNGs give the index, not the palette colour;
grey PNGs (8 or 16 bit) give the stored value. A mask set whose values are exactly {0, 255}
(binary masks such as ISBI 2012's) is read as the two classes 0 and 1.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from sslvit.data.arrays import Subset
from sslvit.data.folders import FolderImages, _scan
from sslvit.data.readers import UnreadableImageError, read_array
from sslvit.data.splits import stratified_split

log = logging.getLogger("sslvit")

# Marks ignored pixels in a coded mask; `torch.nn.functional.cross_entropy` skips it.
IGNORE = -1
_N_NAMED = 5
# PIL modes whose pixel values are the indices themselves (a palette image's are its indices).
_INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")
_RAW_SUFFIXES = (".npy", ".tif", ".tiff")


def read_mask(path: str | Path) -> np.ndarray:
    """One mask file as an integer array `[H, W]` of class indices (or raw binary values).

    Raises:
        UnreadableImageError: The file cannot be decoded or has colour channels (an RGB
            picture of the classes is not an index mask).
    """
    path = Path(path)
    mode = None
    if path.suffix.lower() not in _RAW_SUFFIXES:
        try:
            with Image.open(path) as img:
                mode = img.mode
                if mode in _INDEX_MODES:
                    return np.asarray(img).astype(np.int64)
        except (OSError, SyntaxError, ValueError) as err:
            raise UnreadableImageError(f"{path}: cannot decode mask ({err})") from None
    array = read_array(path)  # TIFF and .npy masks, grey+alpha PNGs
    if array.shape[0] != 1 or array.dtype.kind not in "biu":
        raise UnreadableImageError(
            f"{path}: a mask must be one channel of integer class indices, found "
            f"{array.shape[0]} channel(s) of {array.dtype}; save it as an 8-bit grey or "
            "palette PNG"
        )
    return array[0].astype(np.int64)


def _stems(root: Path) -> dict[str, str]:
    """Relative path without extension -> relative path, for every readable file under `root`."""
    found: dict[str, str] = {}
    for name in _scan(root):
        stem = str(Path(name).with_suffix(""))
        if stem in found:
            raise ValueError(
                f"{root}: {found[stem]} and {name} share the stem {stem!r}; keep one of them"
            )
        found[stem] = name
    return found


def _report(side: str, folder: Path, names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:_N_NAMED]) + (" ..." if len(names) > _N_NAMED else "")
        log.warning("%s: %d %s without a partner, skipped: %s", folder, len(names), side, shown)


@dataclass
class MaskCoding:
    """How raw mask values become training targets.

    Attributes:
        n_classes: Classes the model predicts, 0..n_classes-1.
        ignore_index: Raw value left out of the loss and the metrics, or None.
        binary: The masks hold only 0 and 255, read as classes 0 and 1.
        names: The raw value each class stands for, as text ("0", "255" for binary masks).
    """

    n_classes: int
    ignore_index: int | None
    binary: bool
    names: list[str]

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw values `[..., H, W]` to int64 targets, `IGNORE` where ignored or out of range."""
        raw = raw.long()
        targets = raw // 255 if self.binary else raw.clone()
        if self.ignore_index is not None and not self.binary:
            targets[raw == self.ignore_index] = IGNORE
        targets[(targets < 0) | (targets >= self.n_classes)] = IGNORE
        return targets

    def decode(self, classes: np.ndarray) -> np.ndarray:
        """Class indices `[H, W]` back to the raw values the masks use, as uint8 or uint16."""
        values = classes * 255 if self.binary else classes
        return values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint16)


class SegmentationPairs:
    """Images paired with masks by file stem (the relative path without its extension).

    Unpaired files on either side are reported in one warning each and skipped, as are
    unreadable images (see `FolderImages`) and masks that are unreadable or differ in size from
    their image.

    Args:
        images_dir: Folder of images (recursive).
        masks_dir: Folder of masks with the same relative paths, any extension.
        strict: Stop on the first unreadable image instead of skipping it.

    Attributes:
        images: The paired images, as an image set (for statistics and pictures).
        mask_paths: The mask of each image.
        names: Stem of each pair.
        in_chans: Channels of every image.
        values: Every raw value found in the masks.
        palette: The palette of the first palette mask, or None.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, strict: bool = False):
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        if not masks_dir.is_dir():
            raise ValueError(f"{masks_dir}: no such folder of masks")
        folder = FolderImages(images_dir, labeled=False, strict=strict)
        image_stems = {str(Path(n).with_suffix("")): k for k, n in enumerate(folder.names)}
        mask_stems = _stems(masks_dir)
        paired = sorted(set(image_stems) & set(mask_stems))
        if not paired:
            raise ValueError(
                f"no image in {images_dir} has a mask in {masks_dir} with the same file stem "
                f"(found {len(image_stems)} images and {len(mask_stems)} masks)"
            )
        _report("images", images_dir, sorted(set(image_stems) - set(mask_stems)))
        _report("masks", masks_dir, sorted(set(mask_stems) - set(image_stems)))

        keep, self.mask_paths, self.values, self.palette, bad = [], [], set(), None, []
        for stem in paired:
            mask_path = masks_dir / mask_stems[stem]
            image_path = folder.paths[image_stems[stem]]
            try:
                mask = read_mask(mask_path)
            except UnreadableImageError as err:
                bad.append(str(err))
                continue
            height, width = read_array(image_path).shape[-2:]
            if mask.shape != (height, width):
                bad.append(f"{mask_path}: {mask.shape[0]}x{mask.shape[1]} px, its image is "
                           f"{height}x{width}")  # fmt: skip
                continue
            if self.palette is None:
                self.palette = _palette(mask_path)
            self.values.update(np.unique(mask).tolist())
            keep.append(image_stems[stem])
            self.mask_paths.append(mask_path)
        if bad:
            log.warning(
                "skipped %d pair%s: %s",
                len(bad),
                "" if len(bad) == 1 else "s",
                "; ".join(bad[:_N_NAMED]),
            )
        if not keep:
            raise ValueError(f"{masks_dir}: none of the {len(paired)} paired masks is usable")
        self.images = Subset(folder, keep)
        self.names = [str(Path(n).with_suffix("")) for n in self.images.names]
        self.labels, self.in_chans = None, folder.in_chans

    def __len__(self) -> int:
        return len(self.mask_paths)

    def take(self, indices) -> SegmentationPairs:
        """The pairs `indices`, in that order; `values` stays that of the whole set."""
        part = copy.copy(self)
        part.images = Subset(self.images.images, [self.images.indices[i] for i in indices])
        part.mask_paths = [self.mask_paths[i] for i in indices]
        part.names = [self.names[i] for i in indices]
        return part

    def split(self, test: float, seed: int) -> tuple[SegmentationPairs, SegmentationPairs]:
        """`(train, test)`: a random `test` fraction of the pairs held out, drawn by `seed`."""
        train_idx, test_idx = stratified_split([0] * len(self), test, seed)
        return self.take(train_idx), self.take(test_idx)

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair `i`: the image float32 `[C, H, W]` (native units), the raw mask int64 `[H, W]`."""
        return self.images.read(i), torch.from_numpy(read_mask(self.mask_paths[i]))


def _palette(path: Path) -> list[int] | None:
    with Image.open(path) as img:
        return img.getpalette() if img.mode == "P" else None


def mask_coding(values: set[int], ignore_index: int | None) -> MaskCoding:
    """The `MaskCoding` of a mask set from all the raw values it holds.

    The class count is the largest value other than `ignore_index`, plus one. A set whose
    values are exactly {0, 255} is binary, whatever `ignore_index` says, and this is logged.

    Raises:
        ValueError: A negative value, or no value other than the ignored one.
    """
    if min(values) < 0:
        raise ValueError(f"mask value {min(values)}: class indices cannot be negative")
    if values == {0, 255}:
        log.info("masks hold only the values 0 and 255: read as binary, 0 -> class 0, 255 -> 1")
        return MaskCoding(2, None, True, ["0", "255"])
    classes = values - {ignore_index}
    if not classes:
        raise ValueError(f"the masks hold only the ignored value {ignore_index}")
    n_classes = max(classes) + 1
    return MaskCoding(n_classes, ignore_index, False, [str(k) for k in range(n_classes)])


class PairTransform:
    """One transform for an (image, raw mask) pair: `-> (input [C, h, w], targets [H', W'])`.

    Training (`crop_scale` given): a random resized crop of both to `img_size` (bicubic with
    antialiasing for the image, nearest neighbour for the mask) and a random horizontal flip,
    so the targets match the input pixel for pixel. Evaluation: the whole image resized to
    `img_size`, its targets kept at the mask's own size. Targets are coded by `coding`.

    Args:
        img_size: Model input (height, width).
        mean: Per-channel mean in the images' units.
        std: Per-channel std.
        coding: How mask values become targets.
        crop_scale: Range of the crop's area as a share of the image's; None for evaluation.
        hflip: Flip with probability 0.5 (training only).
        grey_to_rgb: Repeat a grey image into three channels, for an RGB encoder.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        mean: list[float],
        std: list[float],
        coding: MaskCoding,
        crop_scale: tuple[float, float] | None = None,
        hflip: bool = True,
        grey_to_rgb: bool = False,
    ):
        self.coding, self.train, self.grey_to_rgb = coding, crop_scale is not None, grey_to_rgb
        size, bicubic = tuple(img_size), InterpolationMode.BICUBIC
        if self.train:
            ops = [v2.RandomResizedCrop(size, crop_scale, interpolation=bicubic, antialias=True)]
            ops += [v2.RandomHorizontalFlip()] if hflip else []
        else:
            ops = [v2.Resize(size, interpolation=bicubic, antialias=True)]
        self.ops = v2.Compose([*ops, v2.Normalize(list(mean), list(std))])

    def __call__(self, pair: tuple[torch.Tensor, torch.Tensor]):
        image, raw = pair
        image = image.expand(3, -1, -1) if self.grey_to_rgb else image
        targets = self.coding.encode(raw)
        if not self.train:
            return self.ops(image), targets
        image, targets = self.ops(tv_tensors.Image(image), tv_tensors.Mask(targets))
        return image.as_subclass(torch.Tensor), targets.as_subclass(torch.Tensor)
