"""`lesionseg serve` through the ASGI test client: every endpoint and format, every bad input, the token,
the bounded queue, the per-request timeout, and parity with `predict`."""

import asyncio
import io
import json
import threading

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import synthetic_case
from lesionseg.inference import Segmenter
from lesionseg.io import encode_png
from lesionseg.serve import ServeConfig, create_app


def jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo():
    image, _ = synthetic_case(np.random.default_rng(7), 70, 90)
    return image, jpeg(image)


@pytest.fixture(scope="module")
def client(tiny_model_file):
    with TestClient(create_app(ServeConfig(weights=str(tiny_model_file)))) as c:
        yield c


def segment(client, body, query="", headers=None, **kw):
    return client.post("/v1/segment" + (f"?{query}" if query else ""), content=body,
                       headers={"Content-Type": "image/jpeg", **(headers or {})}, **kw)


def assert_json_error(resp, status, fragment):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == status and fragment in body["error"]
    assert "Traceback" not in resp.text


def test_health_ready_model_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    card = client.get("/v1/model").json()
    assert card["backend"] == "torch" and card["input_size"] == 32 and card["card"] == {"note": "test model"}
    text = client.get("/metrics").text
    assert "# TYPE lesionseg_requests_total counter" in text and "lesionseg_queue_depth 0" in text


def test_page_and_docs_are_served_and_work_offline(client):
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css"),
                       ("/docs", "text/html"), ("/common.js", "text/javascript"), ("/annotate", "text/html"),
                       ("/annotate.js", "text/javascript")):
        resp = client.get(path)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(kind)
        # no CDN, no web fonts: every reference is to this server
        assert "http://" not in resp.text.replace("http://127.0.0.1:8000", "") and "https://" not in resp.text
    page = client.get("/").text
    for element in ('id="file"', 'id="threshold"', 'id="opacity"', 'id="area"', 'id="download"', 'id="view"'):
        assert element in page


def test_mask_is_byte_identical_to_predict(client, photo, tiny_model_file, tmp_path):
    from lesionseg.api import segmenter
    from lesionseg.predict import run_predict

    image, body = photo
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case.jpg").write_bytes(body)
    for query, options in (("", {}), ("threshold=0.3&fill_holes=true&min_area=5",
                                      dict(threshold=0.3, fill_holes=True, min_area=5))):
        out = tmp_path / f"out{len(options)}"
        run_predict([tmp_path / "in"], out, lambda: segmenter(tiny_model_file, **options))
        resp = segment(client, body, query)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert resp.content == (out / "case_mask.png").read_bytes()
        assert resp.headers["x-image-size"] == "90x70"


def test_probabilities_match_the_segmenter(client, photo, tiny_model_file):
    image, body = photo
    from lesionseg.io import decode_image

    expected = Segmenter.load(tiny_model_file).predict(decode_image(body))
    resp = segment(client, body, "format=npy")
    assert resp.headers["content-type"] == "application/x-npy"
    got = np.load(io.BytesIO(resp.content))
    assert got.dtype == np.float32 and got.shape == (70, 90)
    np.testing.assert_array_equal(got, expected)
    png = np.asarray(Image.open(io.BytesIO(segment(client, body, "format=prob").content)))
    assert png.dtype == np.uint8 and png.shape == (70, 90)
    np.testing.assert_array_equal(png, np.round(expected * 255).astype(np.uint8))


def test_overlay_and_max_side(client, photo):
    _, body = photo
    full = Image.open(io.BytesIO(segment(client, body, "format=overlay").content))
    assert full.mode == "RGB" and full.size == (90, 70)
    small = Image.open(io.BytesIO(segment(client, body, "format=overlay&max_side=45").content))
    assert small.size == (45, 35)
    prob = Image.open(io.BytesIO(segment(client, body, "format=prob&max_side=30").content))
    assert max(prob.size) == 30


def test_json_summary_agrees_with_the_mask(client, photo):
    _, body = photo
    for query, headers in (("format=json", None), ("", {"Accept": "application/json"})):
        info = segment(client, body, query, headers).json()
        assert info["image"] == {"width": 90, "height": 70} and set(info["timings_ms"]) == {
            "decode_ms", "queue_ms", "infer_ms", "post_ms"}
    mask = np.asarray(Image.open(io.BytesIO(segment(client, body, "threshold=0.45").content))) > 0
    info = segment(client, body, "format=json&threshold=0.45").json()
    assert info["area_px"] == int(mask.sum()) and info["area_fraction"] == pytest.approx(mask.mean())
    if info["area_px"]:
        ys, xs = np.nonzero(mask)
        assert info["bbox"] == {"x": int(xs.min()), "y": int(ys.min()), "width": int(xs.max() - xs.min() + 1),
                                "height": int(ys.max() - ys.min() + 1)}
        points = np.array(info["contours"][0])
        # contour points lie on the mask
        assert points.shape[1] == 2 and mask[points[:, 1], points[:, 0]].all()


def test_threshold_moves_the_area(client, photo):
    _, body = photo
    areas = [segment(client, body, f"format=json&threshold={t}").json()["area_px"] for t in (0.2, 0.5, 0.8)]
    assert areas[0] >= areas[1] >= areas[2]


def test_multipart_upload(client, photo):
    _, body = photo
    raw = segment(client, body).content
    assert client.post("/v1/segment", files={"file": ("photo.jpg", body, "image/jpeg")}).content == raw
    # the only file
    assert client.post("/v1/segment", files={"image": ("x.jpg", body, "image/jpeg")}).content == raw
    assert_json_error(client.post("/v1/segment", files={"note": (None, "no file here")}), 400,
                      "no file field 'file'")


@pytest.mark.parametrize("query, fragment", [
    ("threshold=1.5", "'threshold': must be between 0 and 1"),
    ("threshold=abc", "'threshold': not a number"),
    ("tta=maybe", "'tta': expected true or false"),
    ("format=gif", "'format': 'gif' is not one of"),
    ("min_area=-3", "query parameter 'min_area': must be ≥ 0, got -3"),
    ("max_side=0&min_area=-5", "query parameter 'min_area': must be ≥ 0, got -5; query parameter 'max_side': "
     "must be ≥ 1, got 0"),
    ("threshold=2&tta=maybe", "'threshold': must be between 0 and 1, got 2.0; query parameter 'tta': "),
    ("thresold=0.4", "unknown query parameter 'thresold'"),
])
def test_bad_parameters_are_400_naming_the_parameter(client, photo, query, fragment):
    assert_json_error(segment(client, photo[1], query), 400, fragment)


def test_bad_bodies(client, photo):
    image, body = photo
    assert_json_error(segment(client, b""), 415, "empty body")
    assert_json_error(segment(client, b"%PDF-1.4 not an image"), 415, "not a readable image")
    assert_json_error(client.post("/v1/segment", json={"image": "base64..."}), 415, "not a readable image")
    png = encode_png(image)
    assert_json_error(segment(client, png[: len(png) // 2]), 400, "cannot decode image")
    assert_json_error(client.get("/v1/segment"), 405, "method not allowed")
    assert_json_error(client.get("/nowhere"), 404, "no route GET /nowhere")


def test_body_and_pixel_limits(tiny_model_file, photo):
    _, body = photo
    cfg = ServeConfig(weights=str(tiny_model_file), max_body_mb=1e-3, max_pixels=60 * 60)
    with TestClient(create_app(cfg)) as c:
        assert_json_error(segment(c, b"x" * 2000), 413, "the limit is 1,048")
        small = jpeg(np.zeros((20, 20, 3), np.uint8))
        assert segment(c, small).status_code == 200
        bomb = encode_png(np.zeros((80, 10, 3), np.uint8))  # 800 px fits; the pixel limit is checked next
        assert segment(c, bomb).status_code == 200
        big = encode_png(np.zeros((61, 61), np.uint8))
        assert_json_error(segment(c, big), 413, "image too large (61x61 = 3,721 pixels; the limit is 3,600)")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixels (what a decompression bomb looks like)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_a_huge_image_is_refused_with_the_service_limit(client):
    response = segment(client, png_header_only(60000, 60000))
    assert_json_error(response, 413, "the limit is 50,000,000")
    assert "200,000,000" not in response.json()["error"]


def test_one_route_takes_a_dicom_image_as_its_alias_does(client, tmp_path):
    """/v1/segment tells a DICOM image by its content and answers as /v1/segment/dicom: a DICOM SEG."""
    import pydicom
    from pydicom.data import get_testdata_file

    body = open(get_testdata_file("CT_small.dcm"), "rb").read()
    answers = [segment(client, body), client.post("/v1/segment/dicom", content=body)]
    assert all(r.status_code == 200 and r.headers["content-type"] == "application/dicom" for r in answers)
    segs = [pydicom.dcmread(io.BytesIO(r.content)) for r in answers]
    assert all(s.Modality == "SEG" for s in segs)
    np.testing.assert_array_equal(segs[0].pixel_array, segs[1].pixel_array)


def test_token_guards_the_api_only(tiny_model_file, photo):
    with TestClient(create_app(ServeConfig(weights=str(tiny_model_file), token="s3cret"))) as c:
        resp = segment(c, photo[1])
        assert_json_error(resp, 401, "missing or wrong token")
        assert resp.headers["www-authenticate"] == "Bearer"
        assert_json_error(segment(c, photo[1], headers={"Authorization": "Bearer nope"}), 401, "token")
        assert segment(c, photo[1], headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert segment(c, photo[1], headers={"X-Lesionseg-Token": "s3cret"}).status_code == 200
        assert c.get("/v1/model").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


class BlockingSegmenter:
    """A Segmenter stand-in whose forward pass waits until released (to fill the queue on purpose)."""

    def __init__(self, real: Segmenter):
        self.real, self.started, self.release = real, threading.Event(), threading.Event()
        self.backend, self.batch_size, self.card, self.tta = real.backend, 1, {}, False
        self.weights_path, self.image_size = real.weights_path, real.image_size
        self.labels, self.label, self.options = real.labels, real.label, real.options
        self.to_mask = real.to_mask

    def predict_batch(self, images, tta=None):
        self.started.set()
        self.release.wait(10)
        return self.real.predict_batch(images, tta)


async def _asgi(app, coro):
    service = app.state.service
    await asyncio.to_thread(service.load)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            return await coro(http)
    finally:
        service.close()


def test_queue_full_is_503_with_retry_after(tiny_model_file, photo):
    blocking = BlockingSegmenter(Segmenter.load(tiny_model_file))
    app = create_app(ServeConfig(max_queue=1, max_batch=1), segmenter=blocking)
    body = photo[1]

    async def scenario(http):
        post = lambda: http.post("/v1/segment", content=body)  # noqa: E731
        first = asyncio.create_task(post())
        await asyncio.to_thread(blocking.started.wait, 10)  # the model is busy with the first image
        second = asyncio.create_task(post())
        while app.state.service.batcher.depth() < 1:  # the second waits in the queue
            await asyncio.sleep(0.01)
        third = await post()
        blocking.release.set()
        return await first, await second, third

    first, second, third = asyncio.run(_asgi(app, scenario))
    assert first.status_code == second.status_code == 200
    assert_json_error(third, 503, "busy")
    assert third.headers["retry-after"] == "1"


def test_timeout_is_504_and_the_job_is_dropped(tiny_model_file, photo):
    blocking = BlockingSegmenter(Segmenter.load(tiny_model_file))
    app = create_app(ServeConfig(timeout_s=0.3, max_batch=1), segmenter=blocking)

    async def scenario(http):
        slow = await http.post("/v1/segment", content=photo[1])
        blocking.release.set()
        await asyncio.sleep(0.2)
        return slow, await http.post("/v1/segment", content=photo[1])

    slow, after = asyncio.run(_asgi(app, scenario))
    assert_json_error(slow, 504, "timed out after 0.3 s")
    assert after.status_code == 200


def test_a_model_failure_is_a_500_and_the_service_lives_on(tiny_model_file, photo):
    real = Segmenter.load(tiny_model_file)

    class Flaky(BlockingSegmenter):
        calls = 0

        def predict_batch(self, images, tta=None):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("boom")
            return self.real.predict_batch(images, tta)

    with TestClient(create_app(ServeConfig(), segmenter=Flaky(real))) as c:
        assert_json_error(segment(c, photo[1]), 500, "internal error")
        assert segment(c, photo[1]).status_code == 200
        assert 'lesionseg_requests_total{path="/v1/segment",status="500"} 1' in c.get("/metrics").text


def test_dicom_seg_round_trip_matches_predict(client, tiny_model_file, tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from lesionseg.api import segmenter
    from lesionseg.predict import run_predict

    source = get_testdata_file("CT_small.dcm")
    resp = client.post("/v1/segment/dicom", content=open(source, "rb").read(),
                       headers={"Content-Type": "application/dicom"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(resp.content))
    ct = pydicom.dcmread(source)
    assert seg.Modality == "SEG" and (seg.Rows, seg.Columns) == (ct.Rows, ct.Columns)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    run_predict([source], tmp_path, lambda: segmenter(tiny_model_file))
    expected = pydicom.dcmread(tmp_path / "CT_small_seg.dcm").pixel_array
    np.testing.assert_array_equal(seg.pixel_array, expected)
    assert_json_error(client.post("/v1/segment/dicom", content=b"not dicom"), 415, "not a readable DICOM")
    assert_json_error(client.post("/v1/segment/dicom?format=json", content=b"x"), 400, "DICOM SEG only")


def test_metrics_count_requests_and_images(client, photo):
    before = client.get("/metrics").text
    n_before = int(
        next(
            line for line in before.splitlines() if line.startswith("lesionseg_images_segmented_total")
        ).split()[-1]
    )
    segment(client, photo[1])
    text = client.get("/metrics").text
    n_after = int(
        next(
            line for line in text.splitlines() if line.startswith("lesionseg_images_segmented_total")
        ).split()[-1]
    )
    assert n_after == n_before + 1
    assert 'lesionseg_request_duration_seconds_bucket{path="/v1/segment",le="+Inf"}' in text


def test_cli_refuses_a_missing_model_in_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lesionseg", "serve", "--weights", str(tmp_path / "no.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("model file not found")


def test_config_file_json_round_trip():
    cfg = ServeConfig(weights="cpu", token="t", cors_origins=["http://localhost:3000"])
    from dataclasses import asdict

    assert ServeConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg


def test_no_cors_unless_asked(client, tiny_model_file, photo):
    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in segment(client, photo[1], headers=origin).headers
    cfg = ServeConfig(weights=str(tiny_model_file), cors_origins=["http://elsewhere.example"])
    with TestClient(create_app(cfg)) as c:
        resp = c.options("/v1/segment", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert resp.headers["access-control-allow-origin"] == "http://elsewhere.example"
        assert segment(c, photo[1], headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_any_model_name_travels_in_the_header(tiny_model_file, photo, tmp_path):
    """Header values are ASCII: a card name with '—' and '²' is percent-encoded (RFC 8187 style), not a
    500."""
    from urllib.parse import unquote

    from lesionseg.models import load_model, save_model

    loaded = load_model(tiny_model_file)
    named = tmp_path / "named.pt"
    name = "U-Net (b8), 160² — lésion"
    save_model(named, loaded.model, loaded.config, loaded.image_size, {**loaded.card, "name": name})
    with TestClient(create_app(ServeConfig(weights=str(named)))) as c:
        resp = segment(c, photo[1])
        assert resp.status_code == 200
        assert unquote(resp.headers["X-Lesionseg-Model"]) == name
        assert c.get("/readyz").json()["model"] == name


def test_a_client_that_leaves_mid_upload_is_not_counted_as_a_server_error(client):
    """An upload cut off by its client is counted as 499 (client closed request) in /metrics, never 500."""
    import asyncio

    scope = {"type": "http", "method": "POST", "path": "/v1/segment", "raw_path": b"/v1/segment",
             "query_string": b"", "headers": [(b"content-type", b"application/octet-stream"),
                                               (b"content-length", b"100000")],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5), "root_path": "", "app": client.app, "state": {}}
    events = [{"type": "http.request", "body": b"\x89PNG" + b"\0" * 1000, "more_body": True},
              {"type": "http.disconnect"}]

    async def receive():
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message):
        pass

    before = client.get("/metrics").text
    asyncio.run(client.app(scope, receive, send))
    after = client.get("/metrics").text
    assert 'path="/v1/segment",status="499"} 1' in after
    assert after.count('status="500"') == before.count('status="500"')
