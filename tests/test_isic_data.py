"""Checks over the real ISIC 2017 and Kvasir-SEG copies in ../shared (skipped, with the reason, where
absent)."""

import pytest

from conftest import isic_or_skip, shared_or_skip
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


def test_every_kvasir_file_reads_as_distributed(capsys):
    """1000 JPEG frames of mixed sizes, JPEG masks with grey levels: all pair, all binarise (said once)."""
    root = shared_or_skip("kvasir_seg")
    counts = {}
    for split in ("train", "val"):
        pairs = discover(root / split)
        assert validate(pairs) is None
        counts[split] = len(pairs)
        assert f"{len(pairs)} JPEG mask(s) with compression grey levels" in capsys.readouterr().err
    assert counts == {"train": 900, "val": 100}


@pytest.mark.parametrize("name, dataset, n", [("default", "isic2017", 150), ("cpu", "isic2017", 150),
                                               ("polyp", "kvasir_seg", 100)])
def test_bundled_model_on_val_holds_its_card_figure(name, dataset, n):
    """Regression guard: each shipped model scores on its dataset's val split what its card says."""
    import lesionseg
    from lesionseg.evaluation import evaluate
    from lesionseg.models.bundled import bundled_model_path

    root = shared_or_skip(dataset)
    if not bundled_model_path(name).is_file():
        pytest.skip(f"no bundled model {name!r}")
    segmenter = lesionseg.Segmenter.load(name, tta=False)  # the card's plain figure: one forward pass
    figures = segmenter.card.get("figures", {})
    result = evaluate(segmenter, root / "val")
    assert result.metrics["n_images"] == n
    claimed = figures.get(f"{dataset}_val", {}).get("mean_jaccard")
    if claimed is None:
        pytest.skip(f"bundled model card states no {dataset} val figure")
    assert result.metrics["mean_jaccard"] == pytest.approx(claimed, abs=2e-3)
    # A model whose card turns TTA on by default also holds the figure of that default (what users get).
    with_default = figures.get(f"{dataset}_val_with_model_default_tta", {}).get("mean_jaccard")
    if with_default is not None:
        by_default = lesionseg.Segmenter.load(name)
        assert by_default.tta
        assert evaluate(by_default, root / "val").metrics["mean_jaccard"] == pytest.approx(
            with_default, abs=2e-3
        )
