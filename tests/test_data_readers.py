"""read_image: every supported mode and layout, and clear errors on broken files."""

import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageFile

from sslvit.data.readers import UnreadableImageError, is_readable_name, read_array, read_image

RNG = np.random.default_rng(0)


def _grey(h=6, w=7, dtype=np.uint8, high=256):
    return RNG.integers(0, high, size=(h, w)).astype(dtype)


def _rgb(h=6, w=7):
    return RNG.integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def _chw(array):
    return torch.from_numpy(np.moveaxis(array, -1, 0).astype(np.float32))


def test_8bit_grey_keeps_values(tmp_path):
    pixels = _grey()
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.dtype == torch.float32 and image.shape == (1, 6, 7)
    assert torch.equal(image[0], torch.from_numpy(pixels.astype(np.float32)))


def test_16bit_grey_is_not_clipped(tmp_path):
    pixels = _grey(dtype=np.uint16, high=65536)
    pixels[0, 0] = 60000
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image.shape == (1, 6, 7)
    assert image.max() >= 60000
    assert read_array(tmp_path / "g16.png").dtype == np.uint16
    assert torch.equal(image[0], torch.from_numpy(pixels.astype(np.float32)))


def test_grey_alpha_drops_alpha(tmp_path):
    grey, alpha = _grey(), _grey()
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.shape == (1, 6, 7)
    assert torch.equal(image[0], torch.from_numpy(grey.astype(np.float32)))


def test_rgba_drops_alpha(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, _grey()[..., None]], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), _chw(rgb))


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette_gives_palette_colours(tmp_path, transparency):
    indices = RNG.integers(0, 4, size=(6, 7)).astype(np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(colours.reshape(-1).tolist())
    extra = {} if transparency is None else {"transparency": transparency}
    img.save(tmp_path / "p.png", **extra)
    assert (transparency is not None) == ("transparency" in Image.open(tmp_path / "p.png").info)
    assert torch.equal(read_image(tmp_path / "p.png"), _chw(colours[indices]))


def test_cmyk_becomes_rgb(tmp_path):
    cmyk = np.zeros((6, 7, 4), np.uint8)
    cmyk[..., 0] = 255
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=95)
    cyan = torch.tensor([0.0, 255.0, 255.0]).view(3, 1, 1).expand(3, 6, 7)
    assert torch.equal(read_image(tmp_path / "c.tif"), cyan)
    assert (read_image(tmp_path / "c.jpg") - cyan).abs().max() <= 3


def test_1bit_gives_0_and_255(tmp_path):
    bits = _grey(high=2).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    Image.fromarray(bits).save(tmp_path / "b.tif")
    for name in ("b.png", "b.tif"):
        image = read_image(tmp_path / name)
        assert image.shape == (1, 6, 7)
        assert torch.equal(image[0], torch.from_numpy(bits * np.float32(255)))


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:4, :4] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "photo.JPG", exif=exif, quality=95)

    image = read_image(tmp_path / "photo.JPG")
    assert image.shape == (3, 20, 10)
    # Displayed upright, the stored top-left corner ends up at the top-right.
    assert image[0, 1, 8] > 200 and image[1, 1, 8] < 50
    assert image[0, 1, 1] < 50 and image[0, 18, 8] < 50


def test_multipage_tiff_stacks_pages_as_channels(tmp_path):
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for k in range(3):
            tif.write(np.full((8, 9), 10 * k, np.uint8))
        tif.write(np.zeros((4, 5), np.uint8))
    image = read_image(tmp_path / "pages.tif")
    assert image.shape == (3, 8, 9)
    assert image.amax(dim=(1, 2)).tolist() == [0.0, 10.0, 20.0]


@pytest.mark.parametrize("layout", ["pages", "separate", "contig"])
def test_13_band_uint16_tiff(tmp_path, layout):
    bands = RNG.integers(0, 65536, size=(13, 8, 9)).astype(np.uint16)
    path = tmp_path / "bands.tif"
    if layout == "pages":
        tifffile.imwrite(path, bands)
    elif layout == "separate":
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    else:
        tifffile.imwrite(
            path, np.moveaxis(bands, 0, -1), photometric="minisblack", planarconfig="contig"
        )
    image = read_image(path)
    assert image.shape == (13, 8, 9)
    assert torch.equal(image, torch.from_numpy(bands.astype(np.float32)))
    assert image.max() > 255


def test_float32_tiff_as_stored(tmp_path):
    values = RNG.normal(size=(5, 6)).astype(np.float32) * 1e-3
    tifffile.imwrite(tmp_path / "f.tiff", values)
    assert torch.equal(read_image(tmp_path / "f.tiff")[0], torch.from_numpy(values))


def test_rgba_and_lzw_tiffs(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.tif")
    Image.fromarray(rgb).save(tmp_path / "lzw.TIF", compression="tiff_lzw")
    assert torch.equal(read_image(tmp_path / "rgba.tif"), _chw(rgb))
    assert torch.equal(read_image(tmp_path / "lzw.TIF"), _chw(rgb))


def test_npy_layouts(tmp_path):
    grey = RNG.normal(size=(5, 6))
    hwc = _rgb()
    chw = RNG.integers(0, 4000, size=(13, 5, 6)).astype(np.uint16)
    for name, array in (("grey", grey), ("hwc", hwc), ("chw", chw)):
        np.save(tmp_path / f"{name}.npy", array)
    assert torch.equal(read_image(tmp_path / "grey.npy"), torch.from_numpy(grey[None]).float())
    assert torch.equal(read_image(tmp_path / "hwc.npy"), _chw(hwc))
    assert torch.equal(read_image(tmp_path / "chw.npy"), torch.from_numpy(chw.astype(np.float32)))


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((40, 40, 5), 5), ((40, 60, 6), 6), ((9, 9, 156), 156), ((5, 40, 40), 5), ((156, 9, 9), 156)],
)
def test_the_band_axis_of_a_multiband_npy_is_the_odd_one_out(tmp_path, shape, channels):
    np.save(tmp_path / "tile.npy", np.zeros(shape, np.float32))
    assert read_image(tmp_path / "tile.npy").shape[0] == channels


def _truncated(tmp_path, name, save):
    full = tmp_path / f"full-{name}"
    save(full)
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
        ("text.png", lambda p: p.write_text("not an image\n"), "cannot decode"),
        ("cube.npy", lambda p: np.save(p, np.zeros((2, 3, 4, 5))), "2-D or 3-D"),
        ("words.npy", lambda p: np.save(p, np.array([["a", "b"]])), "unsupported pixel type"),
    ],
)
def test_bad_files_raise_with_path(tmp_path, name, make, expected):
    path = tmp_path / name
    make(path)
    with pytest.raises(UnreadableImageError, match=expected) as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", ["png", "jpg", "tif"])
def test_truncated_files_raise(tmp_path, suffix):
    pixels = RNG.integers(0, 256, size=(64, 64, 3)).astype(np.uint8)
    path = _truncated(tmp_path, f"cut.{suffix}", lambda p: Image.fromarray(pixels).save(p))
    with pytest.raises(UnreadableImageError, match="cannot decode") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file_raises(tmp_path):
    with pytest.raises(UnreadableImageError, match="cannot open"):
        read_image(tmp_path / "nowhere.png")


def test_extension_matching_is_case_insensitive():
    assert is_readable_name("a/B.JPEG") and is_readable_name("x.Tif") and is_readable_name("y.npy")
    assert not is_readable_name("notes.txt") and not is_readable_name("png")


def _write_png_16bit(path, pixels, colour_type):
    """A 16-bit PNG written by hand: PIL cannot write 16-bit colour PNGs."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("colour_type", "n_samples", "n_kept"), [(2, 3, 3), (6, 4, 3), (4, 2, 1)])
def test_16bit_colour_png_is_not_cut_to_8_bits(tmp_path, colour_type, n_samples, n_kept):
    pixels = RNG.integers(0, 65536, size=(5, 6, n_samples)).astype(np.uint16)
    _write_png_16bit(tmp_path / "deep.png", pixels, colour_type)
    image = read_image(tmp_path / "deep.png")
    assert torch.equal(image, _chw(pixels[..., :n_kept]))
    assert read_array(tmp_path / "deep.png").dtype == np.uint16

    data = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(UnreadableImageError, match="cut.png: cannot decode"):
        read_image(tmp_path / "cut.png")


def test_multipage_lzw_tiff_without_imagecodecs_says_what_to_install(tmp_path):
    pages = [Image.fromarray(np.full((6, 7), k, np.uint8)) for k in range(3)]
    pages[0].save(
        tmp_path / "stack.tif", save_all=True, append_images=pages[1:], compression="tiff_lzw"
    )
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(UnreadableImageError, match="stack.tif: .*pip install imagecodecs"):
            read_image(tmp_path / "stack.tif")
    else:
        assert read_image(tmp_path / "stack.tif").shape == (3, 6, 7)


def test_a_npy_that_is_not_a_numeric_array_is_named_as_such(tmp_path):
    text = tmp_path / "notes.npy"
    text.write_text("not an array")
    with pytest.raises(UnreadableImageError, match=r"notes\.npy: not a NumPy \.npy array"):
        read_image(text)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableImageError, match=r"objects\.npy: holds Python objects"):
        read_image(objects)


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_a_float_array_without_a_finite_value_is_unreadable(tmp_path, fill):
    blank = tmp_path / "blank.npy"
    np.save(blank, np.full((3, 8, 8), fill, np.float32))
    with pytest.raises(UnreadableImageError, match=r"blank\.npy: no valid pixel"):
        read_image(blank)
    partly = np.zeros((3, 8, 8), np.float32)
    partly[0, 0, 0] = fill  # one invalid pixel: read, and filled later
    np.save(tmp_path / "partly.npy", partly)
    assert read_image(tmp_path / "partly.npy").shape == (3, 8, 8)
