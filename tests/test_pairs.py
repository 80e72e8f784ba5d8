import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset
from lesionseg.errors import UserError, ValidationError
from lesionseg.io import list_images
from lesionseg.pairs import discover, validate


def test_pairs_by_id_not_by_order(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    # Sorted orders differ between folders: 'b' image has a mask named without suffix, 'a' with suffix.
    for name, value in (("a", 10), ("b", 20)):
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(root / "images" / f"{name}.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "masks" / "a_segmentation.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(root / "masks" / "b.png")
    pairs = discover(root)
    assert [(p.id, p.image_path.name, p.truth_path.name) for p in pairs] == [
        ("a", "a.jpg", "a_segmentation.png"), ("b", "b.jpg", "b.png")]


def test_every_pairing_problem_reported_together(tmp_path):
    root = make_dataset(tmp_path / "d", n=4)
    (root / "masks" / "case_000_segmentation.png").unlink()
    (root / "images" / "case_001.png").unlink()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "case_002.jpg")  # duplicate id
    with pytest.raises(ValidationError) as exc:
        discover(root)
    text = "\n".join(exc.value.problems)
    assert len(exc.value.problems) == 3
    assert "case_000.png: no mask" in text and "case_001_segmentation.png: no image" in text
    assert "duplicate image id 'case_002'" in text


def test_validate_reports_all_unreadable_and_mismatched(tmp_path):
    root = make_dataset(tmp_path / "d", n=5)
    (root / "images" / "case_000.png").write_bytes(b"")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case_001_segmentation.png")
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64).astype(np.uint8)).save(
        root / "masks" / "case_002_segmentation.png")
    with pytest.raises(ValidationError) as exc:
        validate(discover(root))
    problems = exc.value.problems
    assert len(problems) == 3
    assert (
        "empty file" in problems[0]
        and "10x10 but its image is 64x48" in problems[1]
        and "levels" in problems[2]
    )


def test_validate_keeps_decoded_arrays(dataset):
    pairs = discover(dataset)
    kept = validate(pairs, keep=True)
    assert len(kept) == len(pairs) == 12
    assert kept[0].pair == pairs[0]
    image, mask = kept[0].image, kept[0].truth
    assert image.shape == (48, 64, 3) and mask.shape == (48, 64) and mask.dtype == bool
    assert validate(pairs, keep=True, keep_limit_bytes=1000) is None


@pytest.mark.parametrize("layout, message", [("missing", "data folder not found"),
                                             ("no_subdirs", "expected sub-folders images/ and masks/"),
                                             ("empty", "no images found")])
def test_bad_folders(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout == "empty":
        (root / "images").mkdir()
        (root / "masks").mkdir()
    with pytest.raises(UserError, match=message):
        discover(root)


def test_list_images_expands_folders_and_refuses_missing(dataset, tmp_path):
    files = list_images([dataset / "images"])
    assert len(files) == 12 and files[0].name == "case_000.png"
    with pytest.raises(UserError, match="no such file"):
        list_images([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="an empty folder: nothing to segment"):
        list_images([tmp_path / "empty"])
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images in this folder"):
        list_images([tmp_path / "empty"])
