"""Same seed and data → same weights after one CPU epoch (measured: bitwise on CPU with num_workers=0)."""

import torch

from conftest import SEED_RECIPE, make_dataset, train_ok
from lesionseg.models import load_model

TINY = [*SEED_RECIPE, "model.base_width=4", "model.depth=2", "data.image_size=32", "data.batch_size=4",
        "trainer.max_epochs=1"]


def train_once(data, run, *extra):
    return load_model(train_ok(data, run, *TINY, *extra) / "model.pt").model.state_dict()


def test_same_seed_same_weights_bitwise(tmp_path):
    data = make_dataset(tmp_path / "d", n=12)
    a = train_once(data, tmp_path / "a")
    b = train_once(data, tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = train_once(data, tmp_path / "c", "trainer.seed=1")
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_worker_count_changes_the_stream_but_stays_reproducible(tmp_path):
    """With loader workers, augmentations come from per-worker seeds: reproducible for a given worker count,
    different from the in-process stream (so results depend on data.num_workers)."""
    data = make_dataset(tmp_path / "d", n=12)
    a = train_once(data, tmp_path / "a", "data.num_workers=2")
    b = train_once(data, tmp_path / "b", "data.num_workers=2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_once(data, tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
