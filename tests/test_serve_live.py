"""A real `lesionseg serve` process on a free loopback port: concurrent clients, and the page in headless
Chromium (Debian's chromium + chromium-driver, driven by selenium; skipped with the reason when absent)."""

import contextlib
import io
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "src" / "lesionseg" / "assets" / "samples").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(weights: str, *flags: str) -> Iterator[str]:
    """`lesionseg serve --weights W FLAGS` on a free loopback port, once it answers /readyz; the process is
    stopped on the way out, whether the test passed, failed or skipped."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lesionseg", "serve", "--weights", weights, "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "server not ready in 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server():
    with serving("cpu") as url:
        yield url


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict")
    subprocess.run([sys.executable, "-m", "lesionseg", "predict", *map(str, SAMPLES), "--out", str(out),
                    "--weights", "cpu"], check=True, capture_output=True)
    return [np.asarray(Image.open(out / f"{f.stem}_mask.png")) for f in SAMPLES]


def test_binds_to_loopback_by_default(server):
    assert server.startswith("http://127.0.0.1:")


def test_eight_clients_times_25_requests(server, predicted):
    bodies = [f.read_bytes() for f in SAMPLES]

    def client(k: int) -> list[tuple[int, int, bytes]]:
        out = []
        with httpx.Client(base_url=server, timeout=60) as http:
            for i in range(25):
                j = (k + i) % len(bodies)
                r = http.post("/v1/segment", content=bodies[j], headers={"Content-Type": "image/jpeg"})
                out.append((r.status_code, j, r.content))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for batch in pool.map(client, range(8)) for r in batch]
    assert len(results) == 200 and all(status == 200 for status, _, _ in results)
    for _, j, content in results:
        mask = np.asarray(Image.open(io.BytesIO(content)))
        # Batched with other requests the network's last bits may differ from predict's batch of one; a pixel
        # sitting exactly at the threshold could flip, nothing more.
        assert mask.shape == predicted[j].shape and (mask != predicted[j]).mean() < 1e-3
    metrics = httpx.get(server + "/metrics").text
    assert 'lesionseg_requests_total{path="/v1/segment",status="200"} 200' in metrics


def _chrome():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_page_in_a_real_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chrome()
    try:
        browser.get(server + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "model").text.startswith("model: lesionseg cpu"))
        sample = SAMPLES[0]
        browser.find_element(By.ID, "file").send_keys(str(sample))
        wait.until(lambda b: b.find_element(By.ID, "area").text not in ("", "–"))
        area = browser.find_element(By.ID, "area").text
        assert "%" in area and "px" in area
        fraction = float(area.split("%")[0])
        # The overlay is drawn: the canvas has the image's size and red-tinted pixels.
        width, height, red = browser.execute_script(
            "const c = document.getElementById('view'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 80) n++;"
            "return [c.width, c.height, n];")
        assert (width, height) == (256, 256) and red > 0
        assert browser.find_element(By.ID, "size").text == "256 × 256"
        assert "ms" in browser.find_element(By.ID, "timing").text
        # Moving the threshold slider re-thresholds in the page, with no request: the area shrinks.
        slider = browser.find_element(By.ID, "threshold")
        slider.send_keys(Keys.END)
        wait.until(lambda b: b.find_element(By.ID, "area").text != area)
        assert browser.find_element(By.ID, "threshold-value").text == "0.99"
        assert float(browser.find_element(By.ID, "area").text.split("%")[0]) < fraction
        assert browser.find_element(By.ID, "status").get_attribute("class") != "error"
    finally:
        browser.quit()


def test_page_shows_a_server_error(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    browser = _chrome()
    try:
        browser.get(server + "/")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.ID, "status").get_attribute("class") == "error"
        )
        assert "not a readable image" in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()


def test_page_shows_a_legend_with_a_toggle_per_structure(tmp_path):
    """A model of several structures (the bundled chest model): the page draws each structure in its colour
    from the JSON answer, with a legend whose check boxes switch structures off and on."""
    # a radiograph-like picture: two dark lung fields, a bright mediastinum
    yy, xx = np.mgrid[:512, :512]
    picture = np.full((512, 512), 200, np.uint8)
    for cx in (150, 362):
        picture[((yy - 260) / 170) ** 2 + ((xx - cx) / 90) ** 2 < 1] = 60
    path = tmp_path / "cxr.png"
    Image.fromarray(picture).save(path)
    browser = _chrome()  # skips before any server starts when there is no browser
    try:
        with serving("chest") as url:
            _check_legend(browser, url, path)
    finally:
        browser.quit()


def _check_legend(browser, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#legend input[type=checkbox]")) == 5)
    names = [e.get_attribute("data-structure")
             for e in browser.find_elements(By.CSS_SELECTOR, "#legend input[type=checkbox]")]
    assert set(names) == {"heart", "left_clavicle", "left_lung", "right_clavicle", "right_lung"}
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(lambda b: b.find_element(By.ID, "area").text not in ("", "–"))
    count = "const c = document.getElementById('view'); const d = c.getContext('2d')" \
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;" \
            "for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 1]) > 30) n++; return n;"
    coloured = browser.execute_script(count)
    assert coloured > 0 and "lung" in browser.find_element(By.ID, "area").text
    for box in browser.find_elements(By.CSS_SELECTOR, "#legend input[type=checkbox]"):
        box.click()  # every structure off: nothing coloured is left on the grey picture
    wait.until(lambda b: b.execute_script(count) == 0)
    assert browser.find_element(By.ID, "area").text == "–"


def test_annotating_in_a_real_browser_clicks_brushes_undoes_and_saves(tmp_path):
    """/annotate in Chromium: a click on the canvas lands on that pixel of the image (the server's session
    says where), a brush stroke paints the mask, undo takes it back, and save writes a case that train's
    reader pairs."""
    import torch
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lesionseg.config import ModelConfig
    from lesionseg.models import build_model, save_model
    from lesionseg.pairs import discover, validate

    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=2, prompt="clicks", prompt_channels=2)
    weights = tmp_path / "clicks.pt"
    save_model(weights, build_model(cfg), cfg, image_size=64, card={"note": "test model"})
    annotated, unlabelled = tmp_path / "annotated", tmp_path / "unlabelled"
    unlabelled.mkdir()
    for sample in SAMPLES[:2]:
        shutil.copyfile(sample, unlabelled / sample.name)
    browser = _chrome()
    try:
        with serving(str(weights), "--annotations", str(annotated), "--unlabelled", str(unlabelled)) as url:
            browser.get(url + "/annotate")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.ID, "model").text.startswith("model: "))
            # the unlabelled images are offered, the least confident first; one click opens one
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#next-list button")) == 2)
            first = browser.find_element(By.CSS_SELECTOR, "#next-list button")
            first.click()
            wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(first.get_attribute(
                "data-case") + ": click"))
            browser.find_element(By.ID, "file").send_keys(str(SAMPLES[0]))
            wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(SAMPLES[0].name + ": click"))
            session = browser.execute_script("return state.session")

            def server_state():
                return httpx.get(f"{url}/v1/sessions/{session}").json()

            canvas = browser.find_element(By.ID, "view")
            # all of it in view, so that Selenium's offsets count from its geometric centre
            width = browser.execute_script("arguments[0].style.maxWidth = '400px'; "
                                           "arguments[0].scrollIntoView(); "
                                           "return arguments[0].getBoundingClientRect().width", canvas)
            scale = 256 / width  # the sample is 256 × 256, drawn at the canvas's CSS size
            # Selenium's offsets are from the element's centre: (+20, -30) CSS px → that image pixel
            ActionChains(browser).move_to_element_with_offset(canvas, 20, -30).click().perform()
            wait.until(lambda b: b.find_element(By.ID, "clicks").text == "1")
            (click,) = server_state()["clicks"]
            assert click["positive"]
            assert abs(click["col"] - (width / 2 + 20) * scale) <= 2
            assert abs(click["row"] - (width / 2 - 30) * scale) <= 2

            browser.find_element(By.CSS_SELECTOR, "input[name=tool][value=brush]").click()
            (ActionChains(browser).move_to_element_with_offset(canvas, -60, 50).click_and_hold()
             .move_by_offset(40, 0).move_by_offset(40, 0).release().perform())
            wait.until(lambda b: server_state()["strokes"] == 1)
            wait.until(lambda b: not b.find_element(By.ID, "undo").get_property("disabled"))
            row, col = int((width / 2 + 50) * scale), int((width / 2 - 20) * scale)
            painted = browser.execute_script(f"return state.masks.foreground[{row} * 256 + {col}]")
            assert painted == 1
            browser.find_element(By.ID, "undo").click()
            wait.until(lambda b: server_state()["strokes"] == 0)
            (ActionChains(browser).move_to_element_with_offset(canvas, -60, 50).click_and_hold()
             .move_by_offset(80, 0).release().perform())
            wait.until(lambda b: server_state()["strokes"] == 1)
            browser.find_element(By.ID, "save").click()
            wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("saved "))
        (case,) = validate(discover(annotated), keep=True)
        assert case.image.shape == (256, 256, 3) and case.truth[row, col]
    finally:
        browser.quit()


def test_annotating_a_volume_in_a_real_browser_moves_through_slices_and_saves_a_pair(tmp_path):
    """/annotate with a slice model of volumes: a NIfTI opens at its first slice, Page Up and the slider move
    through the slices, a click lands on the slice shown, and save writes the volume and its label map."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from conftest import train_ok
    from lesionseg.evaluation import load_labelled
    from test_volumes import TINY as SLICES
    from test_volumes import make_volume_dataset

    browser = _chrome()
    try:
        data = make_volume_dataset(tmp_path / "data", n=6, layout="nnunet")
        weights = train_ok(data, tmp_path / "run", *SLICES, "trainer.max_epochs=1", "model.prompt=clicks") \
            / "model.pt"
        annotated = tmp_path / "annotated"
        with serving(str(weights), "--annotations", str(annotated)) as url:
            browser.get(url + "/annotate")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.ID, "model").text.startswith("model: "))
            browser.find_element(By.ID, "file").send_keys(str(data / "imagesTr" / "vol_000_0000.nii.gz"))
            wait.until(lambda b: b.find_element(By.ID, "status").text.endswith("mask is wrong"))
            slices = browser.execute_script("return state.result.slices")
            assert slices > 2 and browser.find_element(By.ID, "slice-picker").is_displayed()
            browser.find_element(By.TAG_NAME, "body").send_keys(Keys.PAGE_UP)
            wait.until(lambda b: b.execute_script("return state.slice") == 1)
            browser.execute_script("const s = document.getElementById('slice'); s.value = arguments[0];"
                                   "s.dispatchEvent(new Event('input'));", slices // 2)
            wait.until(lambda b: b.execute_script("return state.slice") == slices // 2)
            assert browser.find_element(By.ID, "slice-value").text == f"{slices // 2 + 1} / {slices}"
            browser.find_element(By.ID, "structure").send_keys("Posterior")
            canvas = browser.find_element(By.ID, "view")
            browser.execute_script("arguments[0].scrollIntoView()", canvas)
            ActionChains(browser).move_to_element(canvas).click().perform()
            wait.until(lambda b: b.find_element(By.ID, "clicks").text == "1")
            session = browser.execute_script("return state.session")
            (click,) = httpx.get(f"{url}/v1/sessions/{session}?slice={slices // 2}").json()["clicks"]
            assert click["slice"] == slices // 2 and click["structure"] == "Posterior"
            browser.find_element(By.CSS_SELECTOR, "input[name=tool][value=brush]").click()
            (ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(10, 0).release()
             .perform())
            wait.until(lambda b: httpx.get(f"{url}/v1/sessions/{session}").json()["strokes"] == 1)
            browser.find_element(By.ID, "save").click()
            wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("saved "))
        image, truth = load_labelled(annotated).load(0)
        assert image.array.shape == truth.shape and image.array.ndim == 3 and (truth == 2).any()
    finally:
        browser.quit()
