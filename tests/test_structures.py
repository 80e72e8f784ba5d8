"""Several structures end to end: declarations, the three mask layouts, exclusive and overlapping modes,
losses, the model file, and every command (train, evaluate, predict, export, serve, DICOM SEG) on data these
tests make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import SEED_RECIPE, train_ok
from lesionseg.cli import app
from lesionseg.config import ModelConfig
from lesionseg.errors import UserError, ValidationError
from lesionseg.labels import IGNORED, Declared, Labels
from lesionseg.model_file import FORMAT_VERSION, ModelFile, Preprocessing
from lesionseg.models import build_model
from lesionseg.pairs import BinaryMasks, LabelMaps, StructureFolders, discover, labels_of, load_pair, validate

runner = CliRunner()
NAMES = ("disc", "bar")


def shapes(rng: np.random.Generator, h: int = 40, w: int = 48):
    """An image with a bright disc and a grey bar across it (they overlap), and both bool masks."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.integers(14, h - 14), rng.integers(16, w - 16)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 9**2
    bar = (abs(yy - cy) < 3) & (abs(xx - cx) < 15)
    image = np.full((h, w, 3), 40, np.uint8)
    image[disc] = 200
    image[bar] = 120
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return image, disc, bar


def make_folders(root: Path, n: int = 8, seed: int = 0, ext: str = ".gif") -> Path:
    """Layout (b): masks/<structure>/<id><ext>, overlapping."""
    rng = np.random.default_rng(seed)
    for sub in ("images", *(f"masks/{s}" for s in NAMES)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, disc, bar = shapes(rng)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        for name, m in zip(NAMES, (disc, bar)):
            Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(root / "masks" / name / f"s{i}{ext}")
    return root


def make_index_maps(
    root: Path,
    n: int = 8,
    seed: int = 0,
    kind: str = "L",
    values=(1, 2),
    declare: str = "nnunet",
    ignore: int | None = None,
) -> Path:
    """Layout (a): masks/<id>.png holding the values (the bar drawn over the disc: exclusive)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, disc, bar = shapes(rng)
        index = np.zeros(disc.shape, np.uint16 if kind == "I;16" else np.uint8)
        index[disc], index[bar] = values
        if ignore is not None:
            index[:3, :3] = ignore
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        if kind == "P":
            img = Image.fromarray(index.astype(np.uint8), mode="P")
            img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * 759)  # colours that are not the indices
        else:
            img = Image.fromarray(index)
        img.save(root / "masks" / f"s{i}.png")
    labels = {"background": 0, "disc": values[0], "bar": values[1]}
    if ignore is not None:
        labels["ignore"] = ignore
    if declare == "msd":
        labels = {str(v): k for k, v in labels.items()}
    (root / "dataset.json").write_text(json.dumps({"name": "shapes", "labels": labels}))
    return root


# declarations


def test_msd_and_nnunet_declarations_read_alike(tmp_path):
    a = labels_of(discover(make_index_maps(tmp_path / "a", declare="nnunet", ignore=255)))
    b = labels_of(discover(make_index_maps(tmp_path / "b", declare="msd", ignore=255)))
    assert a == b
    assert a.mode == "exclusive" and a.names == ("disc", "bar") and a.ignore_value == 255
    assert a.out_channels == 3 and Labels.from_dict(a.to_dict()) == a


def test_regions_and_bad_declarations_are_refused(tmp_path):
    root = make_index_maps(tmp_path / "d")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2]}}))
    with pytest.raises(UserError, match="regions"):
        discover(root)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 1}}))
    with pytest.raises(UserError, match="share a value"):
        discover(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="dataset.json: not readable JSON"):
        discover(root)


def test_the_config_can_declare_the_labels(tmp_path):
    root = make_index_maps(tmp_path / "d")
    (root / "dataset.json").unlink()
    assert isinstance(discover(root).pop().layout, BinaryMasks)  # undeclared: today's binary masks
    pairs = discover(root, Declared.for_folder(root, {"disc": 1, "bar": 2}))
    assert labels_of(pairs).names == ("disc", "bar")


# the layouts


@pytest.mark.parametrize("kind", ["L", "I;16", "P"])
def test_index_maps_8_16_bit_and_palette_give_the_same_channels(tmp_path, kind):
    root = make_index_maps(tmp_path / kind, kind=kind)
    pairs = discover(root)
    assert isinstance(pairs[0].layout, LabelMaps)
    _, mask = load_pair(pairs[0])
    _, disc, bar = shapes(np.random.default_rng(0))
    assert mask.shape == (40, 48, 2) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[..., 1], bar)
    np.testing.assert_array_equal(mask[..., 0], disc & ~bar)


def test_ignore_value_is_marked_in_every_channel(tmp_path):
    _, mask = load_pair(discover(make_index_maps(tmp_path / "d", ignore=255))[0])
    assert (mask[:3, :3] == IGNORED).all() and (mask[3:] != IGNORED).all()


def test_structure_folders_overlap_and_report_each_share(tmp_path, capsys):
    pairs = discover(make_folders(tmp_path / "d"))
    labels = labels_of(pairs)
    assert isinstance(pairs[0].layout, StructureFolders)
    assert labels.mode == "overlapping" and labels.names == ("bar", "disc")  # folder names, sorted
    _, mask = load_pair(pairs[0])
    assert ((mask[..., 0] == 1) & (mask[..., 1] == 1)).any()  # the bar lies over the disc
    validate(pairs)
    line = capsys.readouterr().err
    assert "8 pairs, overlapping structures: bar" in line and "disc" in line and "%" in line


def test_overlap_in_exclusive_mode_names_the_file_and_both_structures(tmp_path):
    root = make_folders(tmp_path / "d")
    pairs = discover(root, Declared.for_folder(root, mode="exclusive"))
    with pytest.raises(ValidationError) as exc:
        validate(pairs)
    assert "s0.gif: structures bar and disc overlap" in exc.value.problems[0]


# binary masks under the names public datasets use


def binary_folder(root: Path, folder: str, suffix: str, n: int = 4, instances: bool = False) -> Path:
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / folder).mkdir()
    for i in range(n):
        image, disc, bar = shapes(rng)
        Image.fromarray(image).save(root / "images" / f"u{i}.png")
        Image.fromarray(np.where(disc, 255, 0).astype(np.uint8)).save(root / folder / f"u{i}{suffix}.png")
        if instances:
            second = np.zeros_like(disc)
            second[:4, :4] = True
            Image.fromarray(np.where(second, 255, 0).astype(np.uint8)).save(
                root / folder / f"u{i}{suffix}_1.png"
            )
    return root


@pytest.mark.parametrize("folder", ["masks", "mask", "labels", "annotations", "ground_truth"])
@pytest.mark.parametrize("suffix", ["", "_segmentation", "_mask", "_seg", "_label", "_gt"])
def test_common_mask_folders_and_suffixes_pair(tmp_path, folder, suffix):
    pairs = discover(binary_folder(tmp_path / "d", folder, suffix))
    assert [p.id for p in pairs] == ["u0", "u1", "u2", "u3"]


def test_instance_masks_are_merged_by_union_and_said_so(tmp_path, capsys):
    pairs = discover(binary_folder(tmp_path / "d", "mask", "_mask", instances=True))
    assert "4 instance mask(s) (e.g. u0_mask_1.png) merged by union" in capsys.readouterr().err
    _, mask = load_pair(pairs[0])
    assert mask[:4, :4].all() and mask.sum() > 16


def test_when_most_files_fail_to_pair_one_line_gives_the_cause(tmp_path):
    root = binary_folder(tmp_path / "d", "masks", "_annotation", n=30)
    result = runner.invoke(
        app, ["evaluate", "--data", str(root), "--weights", "cpu", "--out", str(tmp_path / "ev")]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert "0 of 30 images paired; the masks end in `_annotation`" in lines[0]
    assert len(lines) == 1 + 20 + 1 + 1  # cause, 20 problems, "... and N more", the error
    assert "and 40 more" in lines[21]
    assert not (tmp_path / "ev").exists()


def test_a_set_of_empty_masks_is_refused_and_empty_ones_counted(tmp_path, capsys):
    root = binary_folder(tmp_path / "d", "masks", "")
    for f in (root / "masks").iterdir():
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(f)
    with pytest.raises(UserError, match="all 4 masks are empty"):
        validate(discover(root))
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(root / "masks" / "u0.png")
    validate(discover(root))
    assert "3 of 4 masks are empty" in capsys.readouterr().err


# bad input: one line naming the file, exit 2, nothing written


def cli_refuses(args: list[str], fragment: str, out: Path) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_undeclared_value_is_refused(tmp_path):
    root = make_index_maps(tmp_path / "d", values=(1, 7))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "disc": 1, "bar": 2}}))
    out = tmp_path / "run"
    cli_refuses(["train", "--data", str(root), "--out", str(out)], "s0.png: value 7 not declared", out)


def test_palette_index_beyond_the_classes_is_refused(tmp_path):
    root = make_index_maps(tmp_path / "d", kind="P", values=(1, 5))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "disc": 1, "bar": 2}}))
    out = tmp_path / "run"
    cli_refuses(
        ["train", "--data", str(root), "--out", str(out)], "s0.png: palette index 5 not declared", out
    )


def test_structure_folder_missing_an_id_is_refused(tmp_path):
    root = make_folders(tmp_path / "d")
    (root / "masks" / "disc" / "s3.gif").unlink()
    out = tmp_path / "run"
    cli_refuses(
        ["train", "--data", str(root), "--out", str(out)], "no mask for image s3.png (structure disc)", out
    )


def test_overlap_in_exclusive_mode_is_refused_by_train(tmp_path):
    root = make_folders(tmp_path / "d")
    out = tmp_path / "run"
    cli_refuses(
        ["train", "--data", str(root), "--out", str(out), "data.label_mode=exclusive"],
        "structures bar and disc overlap",
        out,
    )


# losses


def test_losses_leave_ignored_pixels_out_and_weigh_structures_alike():
    from lesionseg.losses import ExclusiveDiceCELoss, OverlappingDiceBCELoss

    torch.manual_seed(0)
    target = (torch.rand(2, 2, 16, 16) > 0.5).float()
    target[:, 1] = target[:, 1] * (1 - target[:, 0])  # exclusive
    logits = torch.randn(2, 3, 16, 16)
    ignored = target.clone()
    ignored[:, :, :4] = IGNORED
    changed = logits.clone()
    changed[:, :, :4] = 50 * torch.randn(2, 3, 4, 16)  # what the network says there must not matter
    for loss, lg in ((ExclusiveDiceCELoss(), logits), (OverlappingDiceBCELoss(), logits[:, 1:])):
        other = changed if lg.shape[1] == 3 else changed[:, 1:]
        assert torch.isclose(loss(lg, ignored), loss(other, ignored))
        assert not torch.isclose(loss(lg, target), loss(other, target))
    # a perfect answer scores near zero
    perfect = torch.cat([1 - target.sum(1, keepdim=True), target], 1) * 40 - 20
    assert ExclusiveDiceCELoss()(perfect, target) < 0.05
    assert OverlappingDiceBCELoss()(target * 40 - 20, target) < 0.05


# the model file


def multi_file(tmp_path: Path, labels: Labels, size: int = 32) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=2, out_channels=labels.out_channels)
    path = tmp_path / f"{labels.mode}.pt"
    ModelFile.from_model(build_model(cfg), cfg, Preprocessing(size), {"note": "test"}, labels).write(path)
    return path


OVERLAPPING = Labels.of("overlapping", [("bar", 1), ("disc", 2)])
EXCLUSIVE = Labels.of("exclusive", [("disc", 1), ("bar", 2)])


def test_model_file_records_the_structures_in_format_3(tmp_path):
    path = multi_file(tmp_path, OVERLAPPING)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 3 and payload["labels"]["mode"] == "overlapping"
    file = ModelFile.read(path)
    assert file.labels == OVERLAPPING and file.build()(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    payload["format_version"] = FORMAT_VERSION + 1  # a version no reader knows
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(UserError, match="newer lesionseg"):
        ModelFile.read(tmp_path / "newer.pt")


def test_one_structure_files_keep_their_old_format(tmp_path, tiny_model_file):
    assert torch.load(tiny_model_file, weights_only=True)["format_version"] == 1
    assert ModelFile.read(tiny_model_file).labels == Labels.binary()


# every command


TINY = [*SEED_RECIPE,
    "model.base_width=4",
    "model.depth=2",
    "data.image_size=32",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.precision=fp32",
    "data.val_fraction=0.25",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """An overlapping two-structure model trained by `lesionseg train` on layout (b), and its data."""
    root = tmp_path_factory.mktemp("structures")
    data = make_folders(root / "data", n=8)
    return data, train_ok(data, root / "run", *TINY) / "model.pt"


def test_train_writes_the_structures_into_the_model_file(trained):
    data, model = trained
    file = ModelFile.read(model)
    assert file.labels.mode == "overlapping" and file.labels.names == ("bar", "disc")
    assert file.architecture.out_channels == 2


def test_evaluate_reports_every_structure_with_boundary_metrics(trained, tmp_path):
    data, model = trained
    out = tmp_path / "ev"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(data),
            "--weights",
            str(model),
            "--out",
            str(out),
            "--pixel-spacing",
            "0.5",
            "--report",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"bar", "disc"} and metrics["distance_unit"] == "mm"
    for entry in metrics["per_class"].values():
        assert {"dice", "jaccard", "hd95", "assd", "nsd", "n_scored", "n_both_empty"} <= set(entry)
        assert entry["n_scored"] + entry["n_both_empty"] == 8
    assert metrics["mean_dice"] == pytest.approx(np.mean([e["dice"] for e in metrics["per_class"].values()]))
    header = (out / "per_case.csv").read_text().splitlines()[0]
    assert header.startswith("id,bar_dice,bar_jaccard,bar_hd95")
    page = (out / "report.html").read_text()
    assert "Per structure" in page and "Worst cases per structure" in page and "HD95 (mm)" in page


def test_evaluate_scores_what_predict_writes(trained, tmp_path):
    """The per-structure Dice of evaluate equals one computed from predict's mask files."""
    from lesionseg.io import read_mask

    data, model = trained
    out = tmp_path / "pred"
    result = runner.invoke(
        app,
        [
            "predict",
            str(data / "images"),
            "--weights",
            str(model),
            "--out",
            str(out),
            "--manifest",
            str(out / "manifest.csv"),
            "--pixel-spacing",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "s0_mask_bar.png").is_file() and (out / "s0_mask_disc.png").is_file()
    assert (out / "s0_overlay.png").is_file() and not (out / "s0_mask.png").exists()
    runner.invoke(
        app, ["evaluate", "--data", str(data), "--weights", str(model), "--out", str(tmp_path / "ev")]
    )
    rows = {
        r.split(",")[0]: r.split(",") for r in (tmp_path / "ev" / "per_case.csv").read_text().splitlines()
    }
    header = rows.pop("id")
    for image_id, row in rows.items():
        _, truth = load_pair(next(p for p in discover(data) if p.id == image_id))
        for k, name in enumerate(("bar", "disc")):
            pred = read_mask(out / f"{image_id}_mask_{name}.png")
            t = truth[..., k] == 1
            if not (pred.any() or t.any()):
                continue
            dice = 2 * (pred & t).sum() / (pred.sum() + t.sum())
            assert float(row[header.index(f"{name}_dice")]) == pytest.approx(dice, abs=1e-6)
    import csv

    manifest = {r["id"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    areas = json.loads(manifest["s0"]["areas"])
    assert set(areas) == {"bar", "disc"}
    assert areas["bar"]["mm2"] == pytest.approx(areas["bar"]["px"] * 0.25)
    again = runner.invoke(
        app, ["predict", str(data / "images"), "--weights", str(model), "--out", str(out), "--skip-existing"]
    )
    assert "8 already done" in again.output


def test_exclusive_models_write_a_palette_label_map(tmp_path):
    from lesionseg.inference import Segmenter

    model = multi_file(tmp_path, EXCLUSIVE)
    data = make_index_maps(tmp_path / "d", n=2)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(data / "images"), "--weights", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = Image.open(out / "s0_mask.png")
    assert written.mode == "P"
    assert written.getpalette()[3:9] == [*EXCLUSIVE.structures[0].color, *EXCLUSIVE.structures[1].color]
    seg = Segmenter.load(model)
    image = np.asarray(Image.open(data / "images" / "s0.png").convert("RGB"))
    prob = seg.predict(image)
    assert prob.shape == (2, 40, 48) and (prob.sum(0) <= 1 + 1e-5).all()
    masks = seg.to_mask(prob)
    assert masks.sum(0).max() <= 1  # exclusive: one class per pixel
    expected = np.zeros((40, 48), np.uint8)
    expected[masks[0]], expected[masks[1]] = 1, 2
    np.testing.assert_array_equal(np.asarray(written), expected)


def test_onnx_and_int8_exports_carry_the_structures(trained, tmp_path):
    data, model = trained
    onnx_path = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "--weights", str(model), "--out", str(onnx_path), "--check"])
    assert result.exit_code == 0, result.output
    int8_path = tmp_path / "m8.onnx"
    result = runner.invoke(
        app,
        [
            "export",
            "--weights",
            str(model),
            "--out",
            str(int8_path),
            "--int8",
            "--calibration",
            str(data / "images"),
        ],
    )
    assert result.exit_code == 0, result.output
    outs = {}
    for name, weights in (("torch", model), ("onnx", onnx_path), ("int8", int8_path)):
        outs[name] = tmp_path / name
        result = runner.invoke(
            app, ["predict", str(data / "images"), "--weights", str(weights), "--out", str(outs[name])]
        )
        assert result.exit_code == 0, result.output
    from lesionseg.io import read_mask

    for name in ("bar", "disc"):
        a, b = (
            read_mask(outs["torch"] / f"s1_mask_{name}.png"),
            read_mask(outs["onnx"] / f"s1_mask_{name}.png"),
        )
        assert (a != b).mean() < 0.002
        assert (outs["int8"] / f"s1_mask_{name}.png").is_file()
    assert (
        ModelFile.from_onnx_metadata(
            __import__("onnxruntime").InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map
        ).labels
        == ModelFile.read(model).labels
    )


def test_service_answers_per_structure_and_refuses_unknown_ones(trained, tmp_path):
    from starlette.testclient import TestClient

    from lesionseg.io import encode_png, read_mask
    from lesionseg.serve import ServeConfig, create_app

    data, model = trained
    out = tmp_path / "pred"
    runner.invoke(
        app, ["predict", str(data / "images" / "s2.png"), "--weights", str(model), "--out", str(out)]
    )
    body = (data / "images" / "s2.png").read_bytes()
    with TestClient(create_app(ServeConfig(weights=str(model)))) as client:
        card = client.get("/v1/model").json()
        assert card["label_mode"] == "overlapping" and [s["name"] for s in card["structures"]] == [
            "bar",
            "disc",
        ]
        resp = client.post("/v1/segment?format=json", content=body, headers={"Content-Type": "image/png"})
        assert resp.status_code == 200, resp.text
        structures = resp.json()["structures"]
        for name in ("bar", "disc"):
            mask = read_mask(out / f"s2_mask_{name}.png")
            assert structures[name]["area_px"] == int(mask.sum())
            assert set(structures[name]) >= {"bbox", "contours", "color", "area_fraction"}
            one = client.post(
                f"/v1/segment?structure={name}", content=body, headers={"Content-Type": "image/png"}
            )
            assert one.content == encode_png(np.where(mask, 255, 0).astype(np.uint8))
        bad = client.post("/v1/segment?structure=heart", content=body, headers={"Content-Type": "image/png"})
        assert (
            bad.status_code == 400 and "heart" in bad.json()["error"] and "bar, disc" in bad.json()["error"]
        )
        need = client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"})
        assert need.status_code == 400 and "structure" in need.json()["error"]
        overlay = client.post(
            "/v1/segment?format=overlay", content=body, headers={"Content-Type": "image/png"}
        )
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"


def test_dicom_seg_has_one_segment_per_structure(tmp_path):
    import highdicom as hd
    import pydicom

    from test_dicom import build_dicom

    labels = Labels.of(
        "overlapping",
        [("heart", 1), ("left_lung", 2), ("right_lung", 3), ("left_clavicle", 4), ("right_clavicle", 5)],
    )
    model = multi_file(tmp_path, labels)
    image, _, _ = shapes(np.random.default_rng(0))
    build_dicom(
        tmp_path / "cxr.dcm",
        image[..., 0].copy(),
        "MONOCHROME2",
        extra={"FrameOfReferenceUID": pydicom.uid.generate_uid(), "ImagerPixelSpacing": [0.35, 0.35]},
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "cxr.dcm"),
            "--weights",
            str(model),
            "--out",
            str(out),
            "--threshold",
            "0.5",
            "--manifest",
            str(tmp_path / "m.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    seg = hd.seg.segread(out / "cxr_seg.dcm")
    assert seg.number_of_segments == 5
    assert [seg.get_segment_description(i).segment_label for i in range(1, 6)] == list(labels.names)
    heart = seg.get_segment_description(1)
    assert heart.segmented_property_type.meaning == "Heart"
    from lesionseg.io import read_mask

    source = pydicom.dcmread(tmp_path / "cxr.dcm")
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)[0]
    assert pixels.shape == (40, 48, 5)
    for k, name in enumerate(labels.names):
        np.testing.assert_array_equal(pixels[..., k].astype(bool), read_mask(out / f"cxr_mask_{name}.png"))


def test_dicom_pixel_spacing_gives_areas_in_mm2(tmp_path):
    import csv

    test_dicom_seg_has_one_segment_per_structure(tmp_path)
    with (tmp_path / "m.csv").open() as f:
        row = next(csv.DictReader(f))
    areas = json.loads(row["areas"])
    assert set(areas) == {"heart", "left_lung", "right_lung", "left_clavicle", "right_clavicle"}
    for area in areas.values():
        assert area["mm2"] == pytest.approx(area["px"] * 0.35**2, abs=1e-3)


def test_exclusive_classes_with_an_ignore_value_train_and_evaluate(tmp_path):
    data = make_index_maps(tmp_path / "data", n=8, ignore=255)
    run = train_ok(data, tmp_path / "run", *TINY)
    file = ModelFile.read(run / "model.pt")
    assert file.labels.mode == "exclusive" and file.labels.ignore_value == 255
    assert file.architecture.out_channels == 3  # background + disc + bar
    out = tmp_path / "ev"
    result = runner.invoke(
        app, ["evaluate", "--data", str(data), "--weights", str(run / "model.pt"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_mode"] == "exclusive" and metrics["distance_unit"] == "px"
    assert set(metrics["per_class"]) == {"disc", "bar"}


def test_service_gives_an_exclusive_models_label_map_as_predict_writes_it(tmp_path):
    from starlette.testclient import TestClient

    from lesionseg.serve import ServeConfig, create_app

    model = multi_file(tmp_path, EXCLUSIVE)
    data = make_index_maps(tmp_path / "d", n=1)
    out = tmp_path / "pred"
    runner.invoke(app, ["predict", str(data / "images"), "--weights", str(model), "--out", str(out)])
    body = (data / "images" / "s0.png").read_bytes()
    with TestClient(create_app(ServeConfig(weights=str(model)))) as client:
        resp = client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"})
        assert resp.status_code == 200 and resp.content == (out / "s0_mask.png").read_bytes()
        prob = client.post("/v1/segment?format=prob", content=body, headers={"Content-Type": "image/png"})
        assert prob.status_code == 400 and "disc, bar" in prob.json()["error"]


@pytest.mark.parametrize("key", ["recipe", "recipe_config"])
def test_evaluate_measures_in_mm_from_the_pixel_spacing_the_card_records(key):
    """A run's card keeps its config under `recipe`, a bundled one under `recipe_config` (its `recipe` is a
    sentence): either way the spacing is read, so distances come out in mm."""
    from lesionseg.evaluation import Spacing

    card = {key: {"data": {"pixel_spacing_mm": 0.35}}}
    if key == "recipe_config":
        card["recipe"] = "U-Net on EfficientNet-Lite0, 384², ..."
    assert Spacing.choose(None, card) == Spacing(0.35, Spacing.choose(None, card).source)
    assert Spacing.choose(None, card).unit == "mm" and Spacing.choose(0.5, card).mm == 0.5
    assert Spacing.choose(None, {"recipe": "a sentence"}).unit == "px"


def test_bundled_chest_model_reports_distances_in_mm(tmp_path):
    from lesionseg.api import segmenter
    from lesionseg.evaluation import Spacing

    assert Spacing.choose(None, segmenter("chest").card).mm == pytest.approx(0.35)
