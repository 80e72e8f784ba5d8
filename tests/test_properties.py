"""Property tests (hypothesis) for metrics, pairing and mask reading, and a bounded fuzz of the readers.

Fuzzing: mutated PNG/JPEG/DICOM bytes must either decode or raise UserError naming the file — never any
other exception (which would reach the user as a traceback)."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from lesionseg.errors import UserError, ValidationError
from lesionseg.io import read_image, read_mask, write_mask
from lesionseg.metrics import aggregate, confusion, image_scores
from lesionseg.pairs import discover

masks = arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12)))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.data())
def test_jaccard_properties(data):
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    s_ab, s_ba = image_scores(confusion(a, b)), image_scores(confusion(b, a))
    assert 0.0 <= s_ab["jaccard"] <= 1.0
    assert s_ab["jaccard"] == pytest.approx(s_ba["jaccard"]) and s_ab["dice"] == pytest.approx(s_ba["dice"])
    assert image_scores(confusion(a, a))["jaccard"] == 1.0
    j, d = s_ab["jaccard"], s_ab["dice"]
    assert d == pytest.approx(2 * j / (1 + j))  # Dice and Jaccard are one monotone function of each other
    agg = aggregate([confusion(a, b)])
    assert agg["mean_jaccard"] == pytest.approx(j) and 0 <= agg["miou_fg_bg"] <= 1


@FAST
@given(masks, st.sampled_from([(0, 255), (0, 1)]))
def test_mask_round_trip(tmp_path_factory, mask, levels):
    path = tmp_path_factory.mktemp("m") / "m.png"
    Image.fromarray(np.where(mask, levels[1], levels[0]).astype(np.uint8)).save(path)
    np.testing.assert_array_equal(read_mask(path), mask)
    write_mask(path, mask)
    np.testing.assert_array_equal(read_mask(path), mask)


ids = st.text(alphabet=st.characters(categories=["L", "N"], max_codepoint=0x24F), min_size=1, max_size=8)


@FAST
@given(st.lists(ids, min_size=1, max_size=6, unique_by=str.lower), st.data())
def test_pairing_is_by_id_whatever_the_names(tmp_path_factory, names, data):
    root = tmp_path_factory.mktemp("d")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    with_suffix = data.draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    for k, (name, suffix) in enumerate(zip(names, with_suffix)):
        Image.fromarray(np.full((2, 2, 3), k, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(
            root / "masks" / f"{name}{'_segmentation' if suffix else ''}.png"
        )
    pairs = discover(root)
    assert sorted(p.id for p in pairs) == sorted(names)
    for p in pairs:
        assert p.image_path.stem == p.id and p.truth_path.stem in (p.id, f"{p.id}_segmentation")


@FAST
@given(masks)
def test_missing_partner_always_reported(tmp_path_factory, mask):
    root = tmp_path_factory.mktemp("d")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / "a.png")
    with pytest.raises(ValidationError, match="1 problem"):
        discover(root)


def _seed_files():
    rng = np.random.default_rng(0)
    out = {}
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt)
        out[fmt] = buf.getvalue()
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("MR_small.dcm"), "rb") as f:
        out["DICOM"] = f.read()
    return out


SEEDS = _seed_files()
FUZZ_EXAMPLES = int(os.environ.get("LESIONSEG_FUZZ_EXAMPLES", "150"))  # make test: 150; longer runs by hand


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_fuzzed_files_never_crash_the_readers(tmp_path_factory, kind, data):
    raw = bytearray(SEEDS[kind])
    n_flips = data.draw(st.integers(0, 12))
    for _ in range(n_flips):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    path = tmp_path_factory.mktemp("f") / ("x.dcm" if kind == "DICOM" else f"x.{kind.lower()}")
    path.write_bytes(bytes(raw[:cut]))
    try:
        if kind == "DICOM":
            from lesionseg.io.dicom import read_frames

            frames = read_frames(path)[1]
            assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
        else:
            image = read_image(path)
            assert image.dtype == np.uint8 and image.shape[2] == 3
    except UserError as exc:
        assert str(path) in str(exc)
