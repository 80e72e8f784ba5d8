import numpy as np
import pytest

from lesionseg.errors import UserError
from lesionseg.inference import Segmenter


@pytest.fixture(scope="module")
def segmenter(tiny_model_file):
    return Segmenter.load(tiny_model_file, batch_size=3)


@pytest.mark.parametrize("hw", [(32, 32), (301, 157), (1, 1), (20, 900)])
def test_probabilities_at_original_size(segmenter, rng, hw):
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    prob = segmenter.predict(image)
    assert prob.shape == hw and prob.dtype == np.float32
    assert (prob >= 0).all() and (prob <= 1).all()
    mask = segmenter.predict_mask(image)
    assert mask.shape == hw and mask.dtype == bool
    np.testing.assert_array_equal(mask, prob > 0.5)


def test_batched_equals_one_by_one(segmenter, rng):
    images = [rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(5)]
    batched = segmenter.predict_batch(images)
    for image, prob in zip(images, batched):
        np.testing.assert_allclose(segmenter.predict(image), prob, atol=1e-5)


def test_bad_threshold_and_backend(tiny_model_file):
    with pytest.raises(UserError, match="threshold"):
        Segmenter.load(tiny_model_file, threshold=1.5)
    with pytest.raises(UserError, match="backend"):
        Segmenter.load(tiny_model_file, backend="tensorrt")


def test_tta_averages_flipped_views_by_hand(tiny_model_file, rng):
    """TTA at scale 1 = mean of the plain prediction and the un-flipped predictions of the flipped images."""
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the model's own size: no resizing involved
    plain = Segmenter.load(tiny_model_file)
    by_hand = (plain.predict(image) + np.flip(plain.predict(np.flip(image, 1)), 1)
               + np.flip(plain.predict(np.flip(image, 0)), 0)) / 3
    tta = Segmenter.load(tiny_model_file, tta=True, tta_scales=(1.0,))
    np.testing.assert_allclose(tta.predict(image), by_hand, atol=1e-6)
    multi = Segmenter.load(tiny_model_file, tta=True, tta_scales=(0.75, 1.0, 1.25))
    assert multi.whole.views(True, multi.tta_scales) == [(s, f) for s in (24, 32, 40) for f in (None, 1, 0)]
    assert multi.predict(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).shape == (45, 70)
    # TTA chosen per call gives what a Segmenter with TTA on gives: one Segmenter serves both
    np.testing.assert_array_equal(plain.predict_batch([image], tta=True)[0], multi.predict(image))
    np.testing.assert_array_equal(multi.predict_batch([image], tta=False)[0], plain.predict(image))


def test_onnx_backend_matches_torch(tiny_model_file, tmp_path, rng):
    from lesionseg.export import export_onnx

    onnx_path = export_onnx(tiny_model_file, tmp_path / "tiny.onnx")
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((32, 32), (50, 71), (7, 300))]
    torch_probs = Segmenter.load(tiny_model_file).predict_batch(images)
    onnx_seg = Segmenter.load(onnx_path)  # backend chosen from the file type
    assert onnx_seg.backend.name == "onnx" and onnx_seg.image_size == 32
    for a, b in zip(torch_probs, onnx_seg.predict_batch(images)):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4


def test_onnx_predict_does_not_import_torch(tiny_model_file, tmp_path, rng):
    from PIL import Image

    from conftest import cli_in_child
    from lesionseg.export import export_onnx

    onnx_path = export_onnx(tiny_model_file, tmp_path / "tiny.onnx")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    proc = cli_in_child(["predict", tmp_path / "x.png", "--out", tmp_path / "o", "--weights", onnx_path],
                        then="assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok") and (tmp_path / "o" / "x_mask.png").is_file()


def test_onnx_backend_exports_a_model_file_once_into_the_cache(tiny_model_file, tmp_path, monkeypatch):
    from lesionseg.inference.backends import open_backend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    via_onnx = Segmenter(open_backend(tiny_model_file, "onnx"))
    assert via_onnx.backend.name == "onnx"
    cached = list((tmp_path / "cache" / "lesionseg").glob("tiny-*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    np.testing.assert_allclose(via_onnx.predict(image), Segmenter.load(tiny_model_file).predict(image),
                               atol=1e-4)
    Segmenter(open_backend(tiny_model_file, "onnx"))  # the second time: the cached file, not a new export
    assert cached[0].stat().st_mtime_ns == stamp


def test_int8_export_runs_like_any_onnx_and_records_its_settings(tiny_model_file, tmp_path, rng):
    import json

    import onnx
    from typer.testing import CliRunner

    from conftest import make_dataset
    from lesionseg.cli import app

    calibration = make_dataset(tmp_path / "cal", n=6) / "images"
    out = tmp_path / "m_int8.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--weights", str(tiny_model_file), "--out", str(out), "--int8",
                                 "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    settings = json.loads(meta["quantization"])
    assert settings["format"] == "QDQ" and settings["calibration_images"] == 6 and meta["image_size"] == "32"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    int8, fp32 = Segmenter.load(out), Segmenter.load(tiny_model_file)
    assert int8.backend.name == "onnx"
    assert np.abs(int8.predict(image) - fp32.predict(image)).mean() < 0.05
    refused = runner.invoke(app, ["export", "--weights", str(tiny_model_file), "--out", str(out), "--int8"])
    assert refused.exit_code == 2 and "--int8 needs --calibration" in refused.stderr
