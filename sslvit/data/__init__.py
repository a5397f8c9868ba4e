"""Files to tensors: readers, image sets, splits, channel statistics and augmented views."""

from sslvit.data.arrays import ArrayImages, ImageSet, Subset
from sslvit.data.bands import BandImages, FileImage
from sslvit.data.cubes import Cube, CubeTiles, PixelWindows
from sslvit.data.folders import FolderImages, open_images
from sslvit.data.ground_truth import GroundTruth
from sslvit.data.medical import WindowedImages
from sslvit.data.rasters import Raster
from sslvit.data.readers import (
    ARRAY_EXTENSIONS,
    IMAGE_EXTENSIONS,
    READABLE_EXTENSIONS,
    UnreadableImageError,
    read_array,
    read_image,
)
from sslvit.data.sample import load_sample
from sslvit.data.slices import SliceImages
from sslvit.data.splits import LabelSpec, label_subset, parse_label_spec, stratified_split
from sslvit.data.stats import channel_stats
from sslvit.data.views import (
    ChannelJitter,
    MultiView,
    SeededViews,
    ViewAugment,
    augmented_view,
    eval_transform,
    train_transform,
)

__all__ = [
    "ARRAY_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "READABLE_EXTENSIONS",
    "ArrayImages",
    "BandImages",
    "ChannelJitter",
    "Cube",
    "CubeTiles",
    "FileImage",
    "FolderImages",
    "GroundTruth",
    "ImageSet",
    "LabelSpec",
    "MultiView",
    "PixelWindows",
    "Raster",
    "SeededViews",
    "SliceImages",
    "Subset",
    "UnreadableImageError",
    "ViewAugment",
    "WindowedImages",
    "augmented_view",
    "channel_stats",
    "eval_transform",
    "label_subset",
    "load_sample",
    "open_images",
    "parse_label_spec",
    "read_array",
    "read_image",
    "stratified_split",
    "train_transform",
]
