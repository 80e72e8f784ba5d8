import os

import numpy as np
import pytest
from PIL import Image

from lesionseg.errors import UserError
from lesionseg.io import atomic_path, read_image, read_mask, write_mask


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_formats_round_trip(tmp_path, rgb, ext):
    path = tmp_path / f"x{ext}"
    Image.fromarray(rgb).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_is_rgb_uint8(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (10, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_16bit_is_rescaled_min_max(tmp_path):
    data = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[..., 0], [[0, 64], [128, 255]])


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, ..., 3] = 255  # top half opaque red-ish, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_palette_and_cmyk(tmp_path, rgb):
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (20, 30, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (20, 30, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 30, 3), np.uint8)  # wide
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    pil.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (30, 10, 3)


@pytest.mark.parametrize("maker, message", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, not an image"), "not a readable image"),
])
def test_broken_files_name_the_file(tmp_path, maker, message):
    path = tmp_path / "bad.png"
    maker(path)
    with pytest.raises(UserError, match=message) as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_truncated_jpeg(tmp_path, rgb):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.repeat(np.repeat(rgb, 10, 0), 10, 1)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UserError, match="t.jpg"):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("values", [(0, 255), (0, 1), (0, 65535)])
def test_two_level_masks_binarise(tmp_path, values):
    lo, hi = values
    arr = np.full((6, 6), lo, np.uint16 if hi > 255 else np.uint8)
    arr[2:4, 1:5] = hi
    Image.fromarray(arr).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == bool and mask.sum() == 8 and mask[2, 1] and not mask[0, 0]


def test_all_background_mask(tmp_path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "m.png")
    assert not read_mask(tmp_path / "m.png").any()


def test_multi_level_mask_refused_unless_threshold(tmp_path):
    arr = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(UserError, match="mask has 4 levels .*--mask-threshold"):
        read_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.png", threshold=128), [[False, False], [True, True]]
    )


def test_colour_mask_refused(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[1, 1] = (255, 0, 0)
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(UserError, match="colour"):
        read_mask(tmp_path / "m.png")


def test_rgb_gray_mask_accepted(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[1, 1] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 1


def test_write_mask_is_0_255_and_round_trips(tmp_path):
    mask = np.zeros((7, 9), bool)
    mask[1:3] = True
    write_mask(tmp_path / "o" / "m.png", mask)
    raw = np.asarray(Image.open(tmp_path / "o" / "m.png"))
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "o" / "m.png"), mask)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and os.listdir(tmp_path) == ["out.txt"]
