"""Interactive sessions through the service (/v1/sessions): clicks, brush, eraser, undo, save into a dataset
folder that train reads, and the bounds (count, idle, token, bad input). The network is replaced by one that
echoes its click channels, so what each click must do to the mask is known exactly."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from lesionseg.config import ModelConfig
from lesionseg.inference import Segmenter
from lesionseg.models import build_model, save_model
from lesionseg.serve import ServeConfig, create_app


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def mask_of(state: dict, name: str = "foreground") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(state["masks"][name])))) > 127


@pytest.fixture(scope="module")
def promptable_file(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=2, prompt="clicks", prompt_channels=2)
    path = tmp_path_factory.mktemp("sessions") / "clicks.pt"
    save_model(path, build_model(cfg), cfg, image_size=32, card={"note": "test model"})
    return path


def echoing(weights) -> Segmenter:
    """A Segmenter whose network answers foreground exactly on its positive click disks (none without a
    click) and background on its negative ones."""
    seg = Segmenter.load(weights)

    def echo(self, batch):
        if batch.shape[1] == 3:
            return np.full((batch.shape[0], 1, *batch.shape[2:]), -20.0, np.float32)
        return (40.0 * batch[:, 3:4] - 40.0 * batch[:, 4:5] - 20.0).astype(np.float32)

    seg.backend.__class__ = type("Echo", (type(seg.backend),), {"__call__": echo})
    return seg


@pytest.fixture
def client(promptable_file, tmp_path):
    cfg = ServeConfig(max_sessions=2, annotations=str(tmp_path / "annotated"), token="s3cret")
    with TestClient(create_app(cfg, segmenter=echoing(promptable_file))) as c:
        c.headers["Authorization"] = "Bearer s3cret"
        yield c


IMAGE = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)


def test_clicks_brush_eraser_and_undo_change_the_mask_where_they_are(client):
    opened = client.post("/v1/sessions", files={"file": ("lesion one.png", png(IMAGE), "image/png")})
    assert opened.status_code == 201, opened.text
    state = opened.json()
    key = state["session"]
    assert (state["height"], state["width"], state["structures"]) == (60, 90, ["foreground"])
    assert not mask_of(state).any()

    clicked = client.post(f"/v1/sessions/{key}/click", json={"row": 30, "col": 20, "positive": True}).json()
    first = mask_of(clicked)
    assert first[30, 20] and not first[30, 70]
    assert clicked["clicks"] == [{"slice": 0, "row": 30, "col": 20, "positive": True,
                                  "structure": "foreground"}]
    second = mask_of(client.post(f"/v1/sessions/{key}/click", json={"row": 10, "col": 70}).json())
    assert second[10, 70] and second[30, 20]

    painted = mask_of(client.post(f"/v1/sessions/{key}/stroke",
                                  json={"points": [[50, 5], [50, 85]], "radius": 2}).json())
    assert painted[50, 5:86].all() and painted[30, 20] and not painted[40, 45]
    erased = mask_of(client.post(f"/v1/sessions/{key}/stroke",
                                 json={"points": [[50, 40], [50, 60]], "radius": 3, "erase": True}).json())
    assert not erased[50, 40:61].any() and erased[50, 10]

    undone = client.post(f"/v1/sessions/{key}/undo")
    np.testing.assert_array_equal(mask_of(undone.json()), painted)
    for _ in range(3):
        last = client.post(f"/v1/sessions/{key}/undo")
    assert not mask_of(last.json()).any()
    assert client.post(f"/v1/sessions/{key}/undo").status_code == 409
    np.testing.assert_array_equal(mask_of(client.get(f"/v1/sessions/{key}").json()), mask_of(last.json()))


def test_save_writes_the_case_in_the_layout_train_reads(client, tmp_path):
    from lesionseg.pairs import discover, validate

    key = client.post("/v1/sessions", files={"file": ("../../etc/x y.png", png(IMAGE), "image/png")}).json()[
        "session"]
    state = client.post(f"/v1/sessions/{key}/click", json={"row": 30, "col": 45}).json()
    saved = client.post(f"/v1/sessions/{key}/save")
    assert saved.status_code == 200, saved.text
    folder = tmp_path / "annotated"
    assert all((folder / f).is_file() for f in saved.json()["files"])
    assert not list(tmp_path.rglob("*.part"))
    pairs = discover(folder)
    assert [p.id for p in pairs] == [saved.json()["id"]] and "x_y_" in saved.json()["id"]
    (case,) = validate(pairs, keep=True)
    np.testing.assert_array_equal(case.image, IMAGE)
    np.testing.assert_array_equal(case.truth.astype(bool), mask_of(state))


def test_sessions_are_bounded_isolated_and_refuse_bad_input_in_one_line(client):
    def open_one():
        return client.post("/v1/sessions", content=png(IMAGE))

    a, b = open_one().json()["session"], open_one().json()["session"]
    full = open_one()
    assert full.status_code == 503 and full.headers["Retry-After"] and "full" in full.json()["error"]
    client.post(f"/v1/sessions/{a}/click", json={"row": 5, "col": 5})
    assert not mask_of(client.get(f"/v1/sessions/{b}").json()).any()  # a's click is a's alone

    bad = [client.post(f"/v1/sessions/{a}/click", json={"row": 60, "col": 5}),
           client.post(f"/v1/sessions/{a}/click", content=b"{not json"),
           client.post(f"/v1/sessions/{a}/click", json={"row": 5, "col": 5, "structure": "heart"}),
           client.post(f"/v1/sessions/{a}/stroke", json={"points": "everywhere"}),
           client.post(f"/v1/sessions/{a}/click", json={"row": True, "col": 5})]
    assert [r.status_code for r in bad] == [400] * 5
    assert all(set(r.json()) == {"error", "status"} and "\n" not in r.json()["error"] for r in bad)
    assert client.get("/v1/sessions/nope").status_code == 404
    assert client.post(f"/v1/sessions/{a}/paint").status_code == 404
    assert client.get(f"/v1/sessions/{a}", headers={"Authorization": "Bearer wrong"}).status_code == 401

    assert client.delete(f"/v1/sessions/{a}").status_code == 200
    assert client.get(f"/v1/sessions/{a}").status_code == 404
    assert open_one().status_code == 201


def test_idle_sessions_close_and_a_model_without_clicks_still_takes_the_brush(tiny_model_file, monkeypatch):
    import lesionseg.serve.sessions as sessions

    with TestClient(create_app(ServeConfig(weights=str(tiny_model_file), session_idle_s=60))) as c:
        key = c.post("/v1/sessions", content=png(IMAGE)).json()["session"]
        no_clicks = c.post(f"/v1/sessions/{key}/click", json={"row": 5, "col": 5})
        assert no_clicks.status_code == 400 and "takes no clicks" in no_clicks.json()["error"]
        brushed = c.post(f"/v1/sessions/{key}/stroke", json={"points": [[5, 5]], "radius": 2, "erase": False})
        assert brushed.status_code == 200 and mask_of(brushed.json())[5, 5]
        assert c.post(f"/v1/sessions/{key}/save").status_code == 409  # no --annotations folder
        now = sessions.time.monotonic()
        monkeypatch.setattr(sessions.time, "monotonic", lambda: now + 61)
        assert c.get(f"/v1/sessions/{key}").status_code == 404


def test_the_next_cases_are_the_least_confident_and_open_by_id(promptable_file, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        pixels = rng.integers(0, 255, (40 + 10 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(unlabelled / f"u{i}.png")
    cfg = ServeConfig(annotations=str(tmp_path / "annotated"), unlabelled=str(unlabelled))
    with TestClient(create_app(cfg, segmenter=echoing(promptable_file))) as c:
        cases = c.get("/v1/next").json()["cases"]
        assert sorted(x["id"] for x in cases) == ["u0", "u1", "u2"] and not any(x["saved"] for x in cases)
        assert [x["uncertainty"] for x in cases] == sorted((x["uncertainty"] for x in cases), reverse=True)
        opened = c.post("/v1/sessions?case=u2")
        assert opened.status_code == 201 and opened.json()["height"] == 60
        key = opened.json()["session"]
        shown = np.asarray(Image.open(io.BytesIO(c.get(f"/v1/sessions/{key}/image").content)))
        np.testing.assert_array_equal(shown, np.asarray(Image.open(unlabelled / "u2.png")))
        c.post(f"/v1/sessions/{key}/stroke", json={"points": [[5, 5]]})
        assert c.post(f"/v1/sessions/{key}/save").status_code == 200
        assert [x["saved"] for x in c.get("/v1/next").json()["cases"] if x["id"] == "u2"] == [True]
        assert c.post("/v1/sessions?case=../../etc/passwd").status_code == 404
    with TestClient(create_app(ServeConfig(), segmenter=echoing(promptable_file))) as c:
        assert c.get("/v1/next").status_code == 409


def test_strokes_and_their_undo_do_not_run_the_network_again(promptable_file, tmp_path):
    seg = echoing(promptable_file)
    calls = []
    echo = type(seg.backend).__call__
    seg.backend.__class__ = type("Counted", (type(seg.backend),),
                                 {"__call__": lambda self, batch: calls.append(1) or echo(self, batch)})
    with TestClient(create_app(ServeConfig(), segmenter=seg)) as c:
        key = c.post("/v1/sessions", content=png(IMAGE)).json()["session"]
        c.post(f"/v1/sessions/{key}/click", json={"row": 30, "col": 20})
        before = len(calls)
        painted = c.post(f"/v1/sessions/{key}/stroke",
                         json={"points": [[50, 5], [50, 85]], "radius": 2}).json()
        undone = c.post(f"/v1/sessions/{key}/undo").json()
        assert len(calls) == before
        assert mask_of(painted)[50, 40] and not mask_of(undone)[50, 40] and mask_of(undone)[30, 20]
        c.post(f"/v1/sessions/{key}/undo")  # the click: the network runs again, without it
        assert len(calls) == before + 1


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory):
    """A promptable slice model of volumes (two exclusive structures), trained one epoch, and its data."""
    from conftest import train_ok
    from test_volumes import TINY as SLICES
    from test_volumes import make_volume_dataset

    root = tmp_path_factory.mktemp("volume_sessions")
    data = make_volume_dataset(root / "data", n=6, layout="nnunet")
    run = train_ok(data, root / "run", *SLICES, "trainer.max_epochs=1", "model.prompt=clicks")
    return run / "model.pt", data


def echoing_volumes(weights, image_channels: int = 3) -> Segmenter:
    """Structure "Anterior" exactly on its positive clicks (disks; balls for a 3-D model), background
    elsewhere (no click: none). `image_channels`: what the network reads before its click channels (a
    slice model's context slices; 1 for a 3-D model)."""
    seg = Segmenter.load(weights)

    def echo(self, batch):
        out = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
        out[:, 1:] = -20.0
        if batch.shape[1] > image_channels:
            out[:, 1] = 40.0 * batch[:, image_channels] - 20.0
        return out

    seg.backend.__class__ = type("Echo", (type(seg.backend),), {"__call__": echo})
    return seg


def test_a_volume_session_shows_slices_clicks_on_one_and_saves_a_pair_train_reads(volume_model, tmp_path):
    """A NIfTI opens as its model's slices; a click refines the slice it is on and no other; a brush stroke
    on another slice paints there, undo takes it back; save writes the volume and its label map, on the
    input's grid, with a dataset.json, into a folder `train` reads; bad slices are one-line 400s."""
    import nibabel as nib

    from lesionseg.evaluation import load_labelled
    from lesionseg.inference.volume_coverage import volume_coverage
    from lesionseg.io.registry import read_volume

    weights, data = volume_model
    source = data / "imagesTr" / "vol_000_0000.nii.gz"
    seg = echoing_volumes(weights)
    coverage = volume_coverage(seg, read_volume(source))
    slices, rows, cols = coverage.stack_shape
    cfg = ServeConfig(annotations=str(tmp_path / "annotated"))
    with TestClient(create_app(cfg, segmenter=seg)) as c:
        opened = c.post("/v1/sessions", files={"file": ("vol 0.nii.gz", source.read_bytes())})
        assert opened.status_code == 201, opened.text
        state = opened.json()
        key = state["session"]
        assert (state["slices"], state["height"], state["width"]) == (slices, rows, cols)
        assert state["structures"] == ["Anterior", "Posterior"] and not mask_of(state, "Anterior").any()
        shown = np.asarray(Image.open(io.BytesIO(c.get(f"/v1/sessions/{key}/image?slice=3").content)))
        np.testing.assert_array_equal(shown, coverage.display_slice(3))

        s, r, col = slices // 2, rows // 2, cols // 2
        clicked = c.post(f"/v1/sessions/{key}/click",
                         json={"slice": s, "row": r, "col": col, "structure": "Anterior"}).json()
        assert clicked["slice"] == s and mask_of(clicked, "Anterior")[r, col]
        assert clicked["clicks"] == [{"slice": s, "row": r, "col": col, "positive": True,
                                      "structure": "Anterior"}]
        for other in (s - 1, s + 1):
            around = c.get(f"/v1/sessions/{key}?slice={other}").json()
            assert not mask_of(around, "Anterior").any() and around["clicks"] == []

        painted = c.post(f"/v1/sessions/{key}/stroke", json={"slice": 1, "points": [[2, 2]], "radius": 1,
                                                              "structure": "Posterior"}).json()
        assert painted["slice"] == 1 and mask_of(painted, "Posterior")[2, 2]
        undone = c.post(f"/v1/sessions/{key}/undo?slice=1").json()
        assert not mask_of(undone, "Posterior").any() and undone["all_clicks"] == 1
        bad = [c.get(f"/v1/sessions/{key}?slice={slices}"), c.get(f"/v1/sessions/{key}/image?slice=-1"),
               c.post(f"/v1/sessions/{key}/click", json={"slice": "two", "row": 1, "col": 1,
                                                         "structure": "Anterior"})]
        assert [b.status_code for b in bad] == [400] * 3
        assert all("'slice'" in b.json()["error"] and "\n" not in b.json()["error"] for b in bad)

        saved = c.post(f"/v1/sessions/{key}/save")
        assert saved.status_code == 200, saved.text
        folder = tmp_path / "annotated"
        assert sorted(saved.json()["files"]) == sorted(["dataset.json", f"images/{saved.json()['id']}.nii.gz",
                                                        f"labels/{saved.json()['id']}.nii.gz"])
        photo = c.post("/v1/sessions", files={"file": ("x.png", png(IMAGE), "image/png")})
        assert photo.status_code == 400 and "\n" not in photo.json()["error"]

    labelled = load_labelled(folder)
    image, truth = labelled.load(0)
    original = nib.load(source)
    np.testing.assert_allclose(image.array, original.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(image.affine, read_volume(source).affine, atol=1e-6)
    marked = np.argwhere(truth == 1)
    assert len(marked) and (truth == 2).sum() == 0
    assert {coverage.stack_position(v)[0] for v in marked} == {s}  # all on the clicked slice
    assert coverage.stack_position(tuple(marked[len(marked) // 2]))[0] == s
    stacked = coverage.to_stack(truth)  # slice order and back: the same voxels
    np.testing.assert_array_equal(coverage.to_source(stacked), truth)
    assert stacked.shape == coverage.stack_shape and (stacked[s] == 1).sum() == len(marked)
