"""Checks over the real ISIC 2017 copy in ../shared (skipped, with the reason, where it is absent)."""

import pytest

from conftest import isic_or_skip
from lesionseg.pairs import discover, validate

pytestmark = pytest.mark.data


def test_all_2150_pairs_validate():
    root = isic_or_skip()
    counts = {}
    for split in ("train", "val"):
        pairs = discover(root / split)
        assert validate(pairs) is None  # no problems raised, nothing kept
        counts[split] = len(pairs)
    assert counts == {"train": 2000, "val": 150}


@pytest.mark.parametrize("name", ["default", "cpu"])
def test_bundled_model_on_isic_val_holds_its_card_figure(name):
    """Regression guard: each shipped model scores on the official val set what its card says."""
    import lesionseg
    from lesionseg.evaluation import evaluate
    from lesionseg.models.registry import default_model_path

    root = isic_or_skip()
    if not default_model_path(name).is_file():
        pytest.skip(f"no bundled model {name!r}")
    segmenter = lesionseg.Segmenter.load(name)
    card = segmenter.card
    result = evaluate(segmenter, root / "val")
    assert result.metrics["n_images"] == 150
    claimed = card.get("figures", {}).get("isic2017_val", {}).get("mean_jaccard")
    if claimed is None:
        pytest.skip("bundled model card states no ISIC 2017 val figure")
    assert result.metrics["mean_jaccard"] == pytest.approx(claimed, abs=2e-3)
