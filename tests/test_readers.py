"""Images as public datasets ship them: TIFFs Pillow narrows or cannot open (16-bit and float samples, planar,
tiled, multi-page, deflate, big-endian, white-is-zero, private tags) and 16-bit colour PNGs, read through the
second readers (tifffile, OpenCV) with the same result whether from a file or from bytes."""

import io

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from lesionseg.errors import UserError
from lesionseg.io import ImageTooLarge, decode_image, read_image
from lesionseg.io.second_readers import stretch

RNG = np.random.default_rng(3)
RGB12 = RNG.integers(0, 4096, (20, 30, 3)).astype(np.uint16)  # 12-bit data in 16-bit samples
RGB8 = RNG.integers(0, 256, (20, 30, 3)).astype(np.uint8)


def write_tiff(path, data, **kw):
    tifffile.imwrite(path, data, **kw)
    return path


def check(path, expected):
    got = read_image(path)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(decode_image(path.read_bytes(), "upload"), expected)  # the service's path


def test_12_bit_rgb_tiff_is_stretched_not_darkened(tmp_path):
    path = write_tiff(tmp_path / "a.tif", RGB12, photometric="rgb")
    assert np.asarray(Image.open(path)).max() < 16  # what Pillow alone gives: the high byte, nearly black
    check(path, stretch(RGB12))
    assert read_image(path).max() == 255


@pytest.mark.parametrize("name, kw", [
    ("deflate", dict(compression="zlib")),
    ("big_endian", dict(byteorder=">")),
    ("tiled", dict(tile=(16, 16))),
    ("private_tags", dict(extratags=[(65000, "s", 0, "scanner notes", True), (65001, "I", 2, (7, 9), True)],
                          description="x" * 5000, resolution=(0.0001, 300))),
])
def test_16_bit_tiff_variants(tmp_path, name, kw):
    data = np.pad(RGB12, ((0, 12), (0, 2), (0, 0))) if name == "tiled" else RGB12
    check(write_tiff(tmp_path / f"{name}.tif", data, photometric="rgb", **kw), stretch(data))


def test_float_tiffs_pillow_cannot_open(tmp_path):
    rgb = RNG.random((20, 30, 3)).astype(np.float32)
    check(write_tiff(tmp_path / "f.tif", rgb, photometric="rgb"), stretch(rgb))
    gray = RNG.random((20, 30))
    gray[0, 0] = np.nan
    expected = stretch(np.where(np.isnan(gray), np.nanmin(gray), gray))
    check(
        write_tiff(tmp_path / "g.tif", gray, photometric="minisblack"), np.repeat(expected[..., None], 3, 2)
    )


def test_planar_multipage_white_is_zero_and_alpha(tmp_path):
    check(
        write_tiff(tmp_path / "planar.tif", np.moveaxis(RGB12, -1, 0), photometric="rgb",
                   planarconfig="separate"),
        stretch(RGB12),
    )
    pages = np.stack([RGB8, 255 - RGB8])
    check(write_tiff(tmp_path / "pages.tif", pages, photometric="rgb"), RGB8)  # the first page
    gray = RGB8[..., 0]
    check(write_tiff(tmp_path / "white.tif", gray, photometric="miniswhite"),
          np.repeat((255 - gray)[..., None], 3, 2))
    rgba = np.concatenate([RGB12, np.full((20, 30, 1), 4095, np.uint16)], axis=2)
    rgba[0, 0, 3] = 0  # one fully transparent pixel: white
    expected = stretch(RGB12)
    got = read_image(write_tiff(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"]))
    np.testing.assert_array_equal(got[1:], expected[1:])
    assert tuple(got[0, 0]) == (255, 255, 255)


def test_8_bit_tiffs_stay_with_pillow_bit_exact(tmp_path):
    Image.fromarray(RGB8).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    check(tmp_path / "lzw.tif", RGB8)
    check(write_tiff(tmp_path / "plain.tif", RGB8, photometric="rgb"), RGB8)


def test_16_bit_colour_png(tmp_path):
    cv2.imwrite(str(tmp_path / "c.png"), RGB12[..., ::-1])  # OpenCV writes BGR
    assert np.asarray(Image.open(tmp_path / "c.png")).max() < 16  # Pillow alone: nearly black
    check(tmp_path / "c.png", stretch(RGB12))


def test_broken_tiff_names_the_file_and_every_reader(tmp_path):
    path = write_tiff(tmp_path / "broken.tif", RGB12, photometric="rgb")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError) as err:
        read_image(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "tiff:" in message and "opencv:" in message


def test_pixel_limit_holds_for_the_second_readers(tmp_path):
    data = write_tiff(
        tmp_path / "big.tif", np.zeros((100, 100, 3), np.float32), photometric="rgb"
    ).read_bytes()
    with pytest.raises(ImageTooLarge, match="100x100"):
        decode_image(data, "upload", max_pixels=5000)
    buf = io.BytesIO()
    Image.fromarray(RGB8).save(buf, format="TIFF")
    with pytest.raises(ImageTooLarge):
        decode_image(buf.getvalue(), "upload", max_pixels=100)


def test_one_registry_reads_every_format_and_tells_volumes_by_their_data(tmp_path):
    """Photos, a DICOM image, a NIfTI and a DICOM series folder go through the one registry; a series whose
    files carry no extension (`image_0`, … as scanners export them) is known by its `DICM` marker."""
    import numpy as np
    from PIL import Image

    from lesionseg.io.registry import READERS, is_volume, read_volume, reader_for
    from test_volumes import affine_for, make_series, save_nifti, synthetic_volume

    assert [r.name for r in READERS] == ["dicom-series", "nifti", "dicom", "photo"]
    image, _ = synthetic_volume(np.random.default_rng(0))
    series = make_series(tmp_path / "series", np.round(image).astype(np.int16))
    for k, f in enumerate(sorted(series.iterdir())):
        f.rename(series / f"image_{k}")
    nifti = save_nifti(tmp_path / "scan.nii.gz", image, affine_for())
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert [reader_for(p).name for p in (series, nifti, photo)] == ["dicom-series", "nifti", "photo"]
    assert is_volume(series) and is_volume(nifti) and not is_volume(photo)
    assert read_volume(series).array.shape == image.shape
