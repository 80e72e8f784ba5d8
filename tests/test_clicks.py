"""The simulated user's clicks, their prompt channels and NoC, against RITM's protocol written as its
evaluation code writes it (OpenCV's distance transform on the padded error masks)."""

import cv2
import numpy as np
import pytest

from lesionseg.clicks import Click, click_maps, clicks_to_reach, next_click


def ritm_next_click(pred: np.ndarray, truth: np.ndarray, not_clicked: np.ndarray) -> Click:
    """isegm/inference/clicker.py `_get_next_click`, padding on."""
    fn = np.pad(truth & ~pred, 1).astype(np.uint8)
    fp = np.pad(pred & ~truth, 1).astype(np.uint8)
    fn_dt = cv2.distanceTransform(fn, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked
    fp_dt = cv2.distanceTransform(fp, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked
    positive = fn_dt.max() > fp_dt.max()
    rows, cols = np.where(fn_dt == fn_dt.max()) if positive else np.where(fp_dt == fp_dt.max())
    return Click((int(rows[0]), int(cols[0])), bool(positive))


def blobs(rng, shape=(48, 64)) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4)
    return noise > np.quantile(noise, rng.uniform(0.4, 0.8))


@pytest.mark.parametrize("seed", range(12))
def test_a_sequence_of_clicks_follows_ritm(seed):
    """Ten clicks on a random case, each scored against a prediction that the click fixed locally."""
    rng = np.random.default_rng(seed)
    truth, pred = blobs(rng), blobs(rng)
    clicked: list[Click] = []
    not_clicked = np.ones(truth.shape, np.float32)
    for _ in range(10):
        ours, theirs = next_click(pred, truth, clicked), ritm_next_click(pred, truth, not_clicked)
        assert ours == theirs
        clicked.append(ours)
        not_clicked[ours.position] = 0
        disk = click_maps(truth.shape, [Click(ours.position, True)], 3)[0] > 0
        pred = (pred | (disk & truth)) if ours.positive else (pred & ~(disk & ~truth))


def test_positive_at_the_centre_of_what_was_missed_negative_on_a_false_region():
    truth = np.zeros((21, 31), bool)
    truth[5:16, 5:16] = True  # an 11x11 square, centre (10, 10)
    assert next_click(np.zeros_like(truth), truth) == Click((10, 10), True)
    pred = truth.copy()
    pred[2:19, 20:29] = True  # a false region wider (9 across) than any miss
    pred[10, 10] = False  # a one-pixel miss
    # 5 deep along the rows 6 to 14 of the false region's middle column: the first of them in C order
    assert next_click(pred, truth) == Click((6, 24), False)
    assert next_click(truth, truth) is None


def test_volumes_measure_depth_in_mm():
    """A box of 7 slices of 5 mm and 21x21 pixels of 1 mm: in voxels its middle slice is the only one 4 deep
    (the first such voxel in C order is near its corner); in mm the in-plane centre is deepest (11 mm),
    from the first slice at least 11 mm inside (slice 3, 15 mm)."""
    truth = np.zeros((9, 30, 30), bool)
    truth[1:8, 5:26, 5:26] = True
    empty = np.zeros_like(truth)
    assert next_click(empty, truth) == Click((4, 8, 8), True)
    assert next_click(empty, truth, spacing=(5.0, 1.0, 1.0)) == Click((3, 15, 15), True)


def test_click_maps_are_disks_and_balls_on_their_channel():
    maps = click_maps((40, 50), [Click((10, 12), True), Click((30, 40), False)], 3)
    assert maps.shape == (2, 40, 50) and maps.dtype == np.float32
    assert maps[0].sum() == maps[1].sum() == 29  # the lattice points within 3 of a centre
    assert maps[0][10, 12] == maps[0][10, 15] == maps[0][13, 12] == 1 and maps[0][12, 15] == 0
    assert maps[1][30, 40] == 1 and maps[1][10, 12] == 0
    ball = click_maps((9, 9, 9), [Click((4, 4, 4), True)], 2)
    assert ball[1].sum() == 0 and ball[0].sum() == 33  # the lattice points within 2 of the centre
    assert not click_maps((5, 5), [], 2).any()


def test_noc_counts_clicks_to_reach_a_dice():
    assert clicks_to_reach([0.5, 0.8, 0.86, 0.91], 0.85, 20) == 2
    assert clicks_to_reach([0.5, 0.8, 0.86, 0.91], 0.90, 20) == 3
    assert clicks_to_reach([0.93], 0.90, 20) == 0  # the model alone was enough
    assert clicks_to_reach([0.1] * 30, 0.85, 20) == 20


class Constant(__import__("torch").nn.Module):
    """A network whose prediction for structure 1 is a fixed square and which ignores its input."""

    def forward(self, x):
        import torch

        out = torch.full((x.shape[0], 1, *x.shape[2:]), -5.0)
        out[:, :, 20:30, 20:30] = 5.0
        return out


def test_training_clicks_follow_the_simulated_user_on_the_models_own_prediction(monkeypatch):
    """Each click is the one next_click gives on the network's prediction with the clicks before it (on a
    sample without a structure, negative clicks on what the network made up); a batch drawn to have no
    click has zero click channels."""
    import torch

    from lesionseg.training import simulated_clicks
    from lesionseg.training.module import predicted_channels
    from lesionseg.training.simulated_clicks import SimulatedClicks

    y = torch.zeros(2, 1, 48, 64)
    y[0, 0, 5:25, 30:60] = 1.0  # the second sample holds no structure
    x = torch.randn(2, 3, 48, 64)
    simulate = SimulatedClicks(structures=1, mode="binary", predicted=predicted_channels)
    monkeypatch.setattr(simulated_clicks, "CLICKS_WEIGHTS", (0.0, 0.0, 0.0, 1.0))
    prompted = simulate(Constant(), x, y)
    assert prompted.shape == (2, 5, 48, 64) and torch.equal(prompted[:, :3], x)

    pred = np.zeros((48, 64), bool)
    pred[20:30, 20:30] = True
    truth = y[0, 0].numpy() > 0.5
    placed = []
    for _ in range(3):
        placed.append(next_click(pred, truth, placed))
    expected = click_maps((48, 64), placed, radius=2.0)
    np.testing.assert_array_equal(prompted[0, 3:].numpy(), expected)
    assert placed[0].positive
    assert not prompted[1, 3].any() and prompted[1, 4].any() and not prompted[1, 4, 31:].any()

    monkeypatch.setattr(simulated_clicks, "CLICKS_WEIGHTS", (1.0, 0.0, 0.0, 0.0))
    assert not simulate(Constant(), x, y)[:, 3:].any()


@pytest.mark.parametrize("kind", ["photo", "volume slices", "3-D"])
def test_any_recipe_becomes_promptable_with_one_key(kind, tmp_path):
    """model.prompt=clicks trains on photos, volume slices and 3-D patches; the model file says it reads
    two click channels per structure, and predict (no clicks) runs it as any model."""
    import nibabel as nib
    from typer.testing import CliRunner

    from conftest import make_dataset, train_ok
    from lesionseg.cli import app
    from lesionseg.models import load_model
    from test_cli import TINY as PHOTO
    from test_patches import TINY_3D
    from test_volumes import TINY as SLICES
    from test_volumes import make_volume_dataset

    if kind == "photo":
        data, recipe = make_dataset(tmp_path / "data", n=8), [*PHOTO, "trainer.max_epochs=1"]
        image = next((data / "images").iterdir())
    else:
        data = make_volume_dataset(tmp_path / "data", n=6, layout="nnunet")
        recipe = [*(SLICES if kind == "volume slices" else TINY_3D), "trainer.max_epochs=1"]
        image = sorted((data / "imagesTr").iterdir())[0]
    run = train_ok(data, tmp_path / "run", *recipe, "model.prompt=clicks")
    loaded = load_model(run / "model.pt")
    structures = 1 if kind == "photo" else 2
    assert loaded.config.prompt == "clicks" and loaded.config.prompt_channels == 2 * structures
    result = CliRunner().invoke(app, ["predict", str(image), "--weights", str(run / "model.pt"),
                                      "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written, result.output
    if kind != "photo":
        label_map = next(p for p in (tmp_path / "pred").iterdir() if p.name.endswith("_labels.nii.gz"))
        assert nib.load(label_map).shape == nib.load(image).shape


@pytest.fixture(scope="module")
def promptable_photos(tmp_path_factory):
    from conftest import make_dataset, train_ok
    from test_cli import TINY as PHOTO

    root = tmp_path_factory.mktemp("promptable")
    data = make_dataset(root / "data", n=8)
    run = train_ok(data, root / "run", *PHOTO, "trainer.max_epochs=1", "model.prompt=clicks")
    return data, run / "model.pt"


def test_a_click_is_drawn_where_the_user_put_it_on_the_image(promptable_photos):
    """A network that echoes its click channels: the probability map, back at the image's size, is high
    around each positive click and low around each negative one, wherever the image was resized."""
    from lesionseg.inference import Segmenter

    _, weights = promptable_photos
    seg = Segmenter.load(weights)

    def echo(batch):
        return 40.0 * batch[:, 3:4] - 40.0 * batch[:, 4:5] - 20.0

    seg.whole.backend = echo
    image = np.zeros((90, 150, 3), np.uint8)  # resized to the network's square
    prob = seg.predict(image, [(0, Click((10, 140), True)), (0, Click((70, 20), True)),
                               (0, Click((45, 75), False))])
    assert prob.shape == (90, 150)
    assert prob[10, 140] > 0.9 and prob[70, 20] > 0.9 and prob[45, 75] < 0.1
    assert prob[45, 110] < 0.1 and (prob > 0.5).mean() < 0.1


def test_evaluate_clicks_reports_dice_after_each_click_and_noc(promptable_photos, tmp_path):
    import json

    from typer.testing import CliRunner

    from lesionseg.cli import app
    from lesionseg.evaluation import load_labelled
    from lesionseg.inference import Segmenter
    from lesionseg.metrics import overlap_scores

    data, weights = promptable_photos
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--weights", str(weights), "--clicks",
                                      "3", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "NoC@90" in result.output
    clicks = json.loads((tmp_path / "e" / "metrics.json").read_text())["clicks"]
    scored = clicks["per_structure"]["foreground"]
    assert clicks["max_clicks"] == 3 and len(scored["dice_after_clicks"]) == 4

    # the same protocol, written out: the model alone, then each click at the deepest error
    seg, labelled = Segmenter.load(weights), load_labelled(data)
    curves = []
    for i in range(len(labelled.pairs)):
        image, truth = labelled.load(i)
        placed, dice = [], []
        for _ in range(4):
            mask = seg.to_mask(seg.predict(image, [(0, c) for c in placed]), image)
            dice.append(overlap_scores(mask, truth.astype(bool))["dice"])
            click = next_click(mask, truth.astype(bool), placed)
            placed += [click] if click is not None else []
        curves.append(dice)
    np.testing.assert_allclose(scored["dice_after_clicks"], np.mean(curves, axis=0), atol=1e-4)
    assert scored["noc90"] == pytest.approx(np.mean([clicks_to_reach(c, 0.9, 3) for c in curves]), abs=1e-3)


def test_evaluate_clicks_refuses_a_model_that_takes_none(tmp_path):
    from typer.testing import CliRunner

    from conftest import make_dataset, train_ok
    from lesionseg.cli import app
    from test_cli import TINY as PHOTO

    data = make_dataset(tmp_path / "data", n=6)
    weights = train_ok(data, tmp_path / "run", *PHOTO, "trainer.max_epochs=1") / "model.pt"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--weights", str(weights), "--clicks",
                                      "2", "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "takes no clicks: train it with model.prompt=clicks" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "e").exists()


def test_a_plain_model_fine_tunes_into_a_promptable_one_starting_exactly_where_it_was(tmp_path):
    """trainer.init_from a plain model with model.prompt=clicks: the input convolution gains click weights of
    0, every other weight is copied, so before any step the model segments as the plain one, with or
    without clicks; the click weights learn at optim.click_lr_scale times the rate; the other direction
    (clicks → none) is refused as another architecture."""
    import torch

    from conftest import make_dataset, train_ok
    from lesionseg.config import load_config
    from lesionseg.models import load_model
    from lesionseg.training.module import SegmentationModule
    from test_cli import TINY as PHOTO

    data = make_dataset(tmp_path / "data", n=6)
    plain = train_ok(data, tmp_path / "plain", *PHOTO, "trainer.max_epochs=1") / "model.pt"
    module = SegmentationModule(load_config(PHOTO[1], [*PHOTO[2:], "model.prompt=clicks",
                                                       f"trainer.init_from={plain}"]))
    source = load_model(plain).model.eval()
    tuned = module.model.eval()
    x = torch.randn(2, 3, 32, 32)
    clicked = torch.cat([x, (torch.rand(2, 2, 32, 32) > 0.9).float()], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), source(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tuned(clicked), source(x), rtol=1e-5, atol=1e-6)
    image_group, click_group = module.configure_optimizers()["optimizer"].param_groups
    assert click_group["lr"] == image_group["lr"] * module.cfg.optim.click_lr_scale
    # base_width 4, depth 2, 2 click channels: the input convolution's twin, then 1x1 at levels 1 and 2
    assert [tuple(p.shape) for p in click_group["params"]] == [(4, 2, 3, 3), (8, 2, 1, 1), (16, 2, 1, 1)]
    run = train_ok(data, tmp_path / "tuned", *PHOTO, "trainer.max_epochs=1", "model.prompt=clicks",
                   f"trainer.init_from={plain}")
    assert load_model(run / "model.pt").config.prompt_channels == 2
    from typer.testing import CliRunner

    from lesionseg.cli import app

    back = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "back"), *PHOTO,
                                    f"trainer.init_from={run / 'model.pt'}"])
    assert back.exit_code == 2 and "model.prompt is none here" in back.output


def test_a_planned_run_fine_tunes_a_model_on_saved_corrections(tmp_path):
    """`train --data ANNOTATED --auto trainer.init_from=MODEL`: the plan keeps the model's architecture and
    input size (so nothing is refused), and the run starts from its weights."""
    import dataclasses

    from conftest import make_dataset, train_ok
    from lesionseg.models import load_model
    from test_cli import TINY as PHOTO

    data = make_dataset(tmp_path / "data", n=8)
    plain = train_ok(data, tmp_path / "plain", *PHOTO, "trainer.max_epochs=1") / "model.pt"
    annotated = make_dataset(tmp_path / "annotated", n=6, seed=3)
    run = train_ok(annotated, tmp_path / "tuned", "--auto", "--minutes", "0.3", f"trainer.init_from={plain}",
                   "model.prompt=clicks", "trainer.max_epochs=1")
    source, tuned = load_model(plain), load_model(run / "model.pt")
    assert tuned.image_size == source.image_size == 32
    assert dataclasses.replace(tuned.config, prompt="none", prompt_channels=0, deep_supervision=False) == \
        dataclasses.replace(source.config, deep_supervision=False)


def test_evaluate_clicks_on_several_structures_clicks_each_alone(tmp_path):
    """Overlapping structures (one folder per structure): each structure gets its own sequence of clicks, on
    its own channels, and its own Dice curve and NoC."""
    import json

    from typer.testing import CliRunner

    from conftest import train_ok
    from lesionseg.cli import app
    from test_structures import TINY as STRUCTURES
    from test_structures import make_folders

    data = make_folders(tmp_path / "data", n=6)
    run = train_ok(data, tmp_path / "run", *STRUCTURES, "trainer.max_epochs=1", "model.prompt=clicks")
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--weights", str(run / "model.pt"),
                                      "--clicks", "2", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    scored = metrics["clicks"]["per_structure"]
    assert sorted(scored) == sorted(metrics["per_class"])
    for name, curve in scored.items():
        assert len(curve["dice_after_clicks"]) == 3 and 0 <= curve["noc90"] <= 2
        assert curve["dice_after_clicks"][0] == pytest.approx(metrics["per_class"][name]["dice"], abs=0.05)


def test_a_voxel_lands_where_the_canonical_order_puts_it():
    from lesionseg.orientation import Canonical

    rng = np.random.default_rng(0)
    shape = (5, 7, 4)
    for affine in (np.diag([-1.0, -1.0, 1.0, 1.0]), np.diag([2.0, 1.0, 3.0, 1.0]),
                   np.array([[0, 0, -2.0, 0], [1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])):
        canonical = Canonical(affine)
        for _ in range(5):
            position = tuple(int(rng.integers(n)) for n in shape)
            one = np.zeros(shape, bool)
            one[position] = True
            assert canonical.forward(one)[canonical.forward_index(position, shape)]


def test_evaluate_clicks_on_volumes_refines_the_clicked_slice(tmp_path, monkeypatch):
    """A slice model of volumes: the protocol in 3-D and in mm, each click refining the slice it is on
    (every other slice keeps the model's probabilities), a Dice curve per structure."""
    import json

    from typer.testing import CliRunner

    from conftest import train_ok
    from lesionseg.cli import app
    from lesionseg.clicks import Click
    from lesionseg.evaluation import load_labelled
    from lesionseg.inference import Segmenter
    from lesionseg.inference import volume_coverage as volume_coverage_module
    from lesionseg.inference.volume_coverage import segment_volume, volume_coverage
    from lesionseg.metrics import overlap_scores
    from test_sessions import echoing_volumes
    from test_volumes import TINY as SLICES
    from test_volumes import make_volume_dataset

    data = make_volume_dataset(tmp_path / "data", n=6, layout="nnunet")
    run = train_ok(data, tmp_path / "run", *SLICES, "trainer.max_epochs=1", "model.prompt=clicks")
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--weights", str(run / "model.pt"),
                                      "--clicks", "2", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert sorted(metrics["clicks"]["per_structure"]) == sorted(metrics["per_class"])
    assert all(len(v["dice_after_clicks"]) == 3 for v in metrics["clicks"]["per_structure"].values())

    # slice by slice: each slice holding the structure is a case; with no click, its Dice in that plane
    seg = Segmenter.load(run / "model.pt")
    labelled = load_labelled(data, model_labels=seg.labels)
    alone_dice: dict[int, list[float]] = {1: [], 2: []}
    for i in range(len(labelled.pairs)):
        volume, truth = labelled.load(i)
        coverage = volume_coverage(seg, volume)
        predicted = coverage.to_stack(segment_volume(seg, volume))
        for value in (1, 2):
            held = coverage.to_stack(truth == value)
            alone_dice[value] += [overlap_scores(predicted[s] == value, held[s])["dice"]
                                  for s in np.flatnonzero(held.any(axis=(1, 2)))]
    for value, name in ((1, seg.labels.structures[0].name), (2, seg.labels.structures[1].name)):
        per_slice = metrics["clicks"]["per_slice"][name]
        assert per_slice["n"] == len(alone_dice[value]) and len(per_slice["dice_after_clicks"]) == 3
        assert per_slice["dice_after_clicks"][0] == pytest.approx(np.mean(alone_dice[value]), abs=1e-4)
    assert "per slice" in result.output

    volume, truth = labelled.load(0)
    coverage = volume_coverage(seg, volume)
    alone = coverage.probabilities()
    position = tuple(int(v) for v in np.argwhere(truth == 1)[len(np.argwhere(truth == 1)) // 2])
    on_stack = coverage.stack_position(position)
    clicked = coverage.clicked(alone, [(0, Click(on_stack, True))])
    changed = [s for s in range(alone.shape[1]) if not np.array_equal(alone[:, s], clicked[:, s])]
    assert len(changed) <= 1

    seg = echoing_volumes(run / "model.pt")  # structure 1 exactly on its positive click disks
    coverage = volume_coverage(seg, volume)
    labels = coverage.labels_of(coverage.clicked(coverage.probabilities(), [(0, Click(on_stack, True))]),
                                seg.post)
    assert labels[position] == 1
    marked = np.argwhere(labels == 1)
    spread = np.abs(marked - np.asarray(position)).max(axis=0)
    assert (spread == 0).sum() == 1  # all on the clicked slice: one plane through the click
    assert np.abs(marked - np.asarray(position)).max() <= 6

    # with a reach of one slice's thickness, the click conditions the slices either side too
    monkeypatch.setattr(volume_coverage_module, "CLICK_REACH_MM", float(coverage.spacing[coverage.axis]))
    stacked = coverage.stack_labels(coverage.clicked(coverage.probabilities(), [(0, Click(on_stack, True))]),
                                    seg.post)
    assert sorted(np.flatnonzero((stacked == 1).any(axis=(1, 2)))) == \
        [s for s in (on_stack[0] - 1, on_stack[0], on_stack[0] + 1) if 0 <= s < stacked.shape[0]]


def test_the_onnx_export_of_a_promptable_model_takes_clicks_as_torch_does(tmp_path):
    """The graph reads the image's channels, then the click channels (the metadata says how many); fed the
    image alone it appends zero click channels. Its probabilities with and without clicks match torch's; the
    INT8 export is calibrated with clicks, so clicks move its answer as they move torch's."""
    import torch

    from conftest import make_dataset
    from lesionseg.clicks import Click, click_maps
    from lesionseg.config import ModelConfig
    from lesionseg.export import export_int8, export_onnx
    from lesionseg.inference import Segmenter
    from lesionseg.models import build_model, save_model
    from lesionseg.models.parts import is_click_weight

    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=2, prompt="clicks", prompt_channels=2)
    network = build_model(cfg)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if is_click_weight(name):
                p.normal_(0, 1.0)
    weights = tmp_path / "clicks.pt"
    save_model(weights, network, cfg, image_size=32, card={"note": "test model"})
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    clicks = [(0, Click((20, 25), True)), (0, Click((5, 5), False))]
    onnx_path = export_onnx(weights, tmp_path / "clicks.onnx")
    torch_seg, onnx_seg = Segmenter.load(weights), Segmenter.load(onnx_path)
    assert onnx_seg.click_channels() == torch_seg.click_channels() == 2
    for placed in ([], clicks):
        np.testing.assert_allclose(onnx_seg.predict(image, placed), torch_seg.predict(image, placed),
                                   atol=1e-4)
    calibration = make_dataset(tmp_path / "cal", n=6) / "images"
    export_int8(weights, tmp_path / "int8.onnx", calibration, n_images=6)
    int8 = Segmenter.load(tmp_path / "int8.onnx")
    assert int8.click_channels() == 2
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    clicked = np.concatenate([x, click_maps((32, 32), [c for _, c in clicks], 2.0)[None]], axis=1)
    by_torch = torch_seg.backend(clicked) - torch_seg.backend(x)  # what the clicks do to the logits
    by_int8 = int8.backend(clicked) - int8.backend(x)
    assert np.corrcoef(by_torch.ravel(), by_int8.ravel())[0, 1] > 0.8
    assert np.abs(by_int8).max() > 0.5 * np.abs(by_torch).max() > 0


def test_a_3d_model_reads_each_click_as_a_ball_across_slices(tmp_path):
    """A promptable 3-D model: a click goes into its click channels as a ball on the model's grid, so it
    reaches the neighbouring slices; `evaluate --clicks` runs the protocol on it (per volume only: the
    per-slice table belongs to slice models)."""
    import json

    from typer.testing import CliRunner

    from conftest import train_ok
    from lesionseg.cli import app
    from lesionseg.evaluation import load_labelled
    from lesionseg.inference.volume_coverage import PatchCoverage, volume_coverage
    from test_patches import TINY_3D
    from test_sessions import echoing_volumes
    from test_volumes import make_volume_dataset

    data = make_volume_dataset(tmp_path / "data", n=4, layout="nnunet")
    run = train_ok(data, tmp_path / "run", *TINY_3D, "trainer.max_epochs=1", "model.prompt=clicks")
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--weights", str(run / "model.pt"),
                                      "--clicks", "2", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    clicks = json.loads((tmp_path / "e" / "metrics.json").read_text())["clicks"]
    assert sorted(clicks["per_structure"]) == ["Anterior", "Posterior"] and "per_slice" not in clicks
    assert all(len(v["dice_after_clicks"]) == 3 for v in clicks["per_structure"].values())

    seg = echoing_volumes(run / "model.pt", image_channels=1)
    volume, truth = load_labelled(data, model_labels=seg.labels).load(0)
    coverage = volume_coverage(seg, volume)
    assert isinstance(coverage, PatchCoverage)
    alone = coverage.probabilities()
    assert not (coverage.stack_labels(alone, seg.post) == 1).any()
    position = tuple(int(v) for v in np.argwhere(truth == 1)[len(np.argwhere(truth == 1)) // 2])
    on_stack = coverage.stack_position(position)
    stacked = coverage.stack_labels(coverage.clicked(alone, [(0, Click(on_stack, True))]), seg.post)
    marked = np.argwhere(stacked == 1)
    assert stacked[on_stack] == 1
    assert len(np.unique(marked[:, 0])) >= 3  # the ball spans slices either side of the clicked one
    assert np.abs(marked - np.asarray(on_stack)).max() <= 6  # and stays around the click
