"""`xpnet serve` in a real browser: headless Debian Chromium driven by Selenium draws digits on the
page's canvas (mouse and touch strokes, and MNIST test images painted in) and reads the prediction.

Set XPNET_SERVE_SCREENSHOT=docs/serve.png to save the page with a drawn digit (the README's picture).
"""
import os

import numpy as np
import pytest

import xpnet
from xpnet.cli import predict_probs

from .serve_support import ROOT, running_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[test]')")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                "apt-get install chromium chromium-driver", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1400,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    with running_server() as server:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(60)
            driver.get(server.url)
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "run").is_displayed())
            yield driver
        finally:
            driver.quit()


def predictions(driver):
    return int(driver.find_element(By.ID, "prediction").get_attribute("data-count"))


def wait_for_prediction(driver, after):
    WebDriverWait(driver, 30).until(lambda d: predictions(d) > after)
    return driver.find_element(By.ID, "prediction").text


def clear(driver):
    driver.find_element(By.ID, "clear").click()
    assert driver.find_element(By.ID, "prediction").text == "-"
    assert driver.execute_script(
        "const c = document.getElementById('pad');"
        "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0);") is False


def stroke(driver, points, touch=False):
    """One stroke through ``points`` (x, y from the canvas's top left, in its 280 x 280 pixels)."""
    pad = driver.find_element(By.ID, "pad")
    offset = lambda p: (int(p[0] - pad.size["width"] / 2), int(p[1] - pad.size["height"] / 2))  # noqa: E731
    if touch:
        finger = PointerInput(interaction.POINTER_TOUCH, "finger")
        actions = ActionBuilder(driver, mouse=finger, duration=10)
        actions.pointer_action.move_to(pad, *offset(points[0])).pointer_down()
        for p in points[1:]:
            actions.pointer_action.move_to(pad, *offset(p))
        actions.pointer_action.pointer_up()
        actions.perform()
    else:
        chain = ActionChains(driver, duration=10).move_to_element_with_offset(pad, *offset(points[0]))
        chain.click_and_hold()
        for p in points[1:]:
            chain.move_to_element_with_offset(pad, *offset(p))
        chain.release().perform()


def line(a, b, n=8):
    return [(a[0] + (b[0] - a[0]) * t / n, a[1] + (b[1] - a[1]) * t / n) for t in range(n + 1)]


def test_the_page_shows_the_run(page):
    assert "seed001-m9" in page.find_element(By.ID, "run-name").text
    assert "0.83 %" in page.find_element(By.ID, "run-summary").text
    for name in ("curves", "confusion"):
        assert page.execute_script(f"return document.getElementById('{name}').naturalWidth") > 100
    assert len(page.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 10


def test_a_mouse_drawn_one(page):
    clear(page)
    before = predictions(page)
    stroke(page, line((150, 40), (135, 240)))
    assert wait_for_prediction(page, before) == "1"


def test_a_seven_in_two_strokes_predicts_after_each(page):
    clear(page)
    before = predictions(page)
    stroke(page, line((70, 60), (210, 60)))
    wait_for_prediction(page, before)
    stroke(page, line((210, 60), (120, 240)))
    assert wait_for_prediction(page, before + 1) == "7"
    bars = page.find_elements(By.CSS_SELECTOR, "#bars .bar")
    best = [b for b in bars if "best" in b.get_attribute("class")]
    assert len(best) == 1 and best[0].find_element(By.CLASS_NAME, "label").text == "7"
    width = best[0].find_element(By.CLASS_NAME, "fill").value_of_css_property("width")
    assert float(width.rstrip("px")) > 100  # more than half of the 200-pixel track
    shot = os.environ.get("XPNET_SERVE_SCREENSHOT")
    if shot:
        page.save_screenshot(os.path.join(ROOT, shot) if not os.path.isabs(shot) else shot)


def test_a_finger_drawn_zero(page):
    clear(page)
    before = predictions(page)
    t = np.linspace(0, 2 * np.pi, 25)
    stroke(page, list(zip(140 + 55 * np.sin(t), 140 - 85 * np.cos(t))), touch=True)
    assert wait_for_prediction(page, before) == "0"


def test_pasted_mnist_test_images_are_classified_as_xpnet_does(page):
    (_, _), (x, y) = xpnet.datasets.load("mnist", data_dir=os.path.join(ROOT, "data"))
    model = xpnet.load(os.path.join(ROOT, "docs", "runs", "seed001-m9", "model.npz"), compile=False)
    expected = predict_probs(model, x[:8]).argmax(axis=1)
    for i in range(8):
        clear(page)
        before = predictions(page)
        page.execute_script("""
            const [pixels, top, left] = arguments;
            const pad = document.getElementById('pad'), ctx = pad.getContext('2d');
            const image = ctx.createImageData(280, 280);
            for (let y = 0; y < 224; y++) for (let x = 0; x < 224; x++)
              image.data[4 * ((top + y) * 280 + left + x) + 3] = pixels[(y >> 3) * 28 + (x >> 3)];
            ctx.putImageData(image, 0, 0);
            window.xpnetServe.predict();""", x[i, 0].ravel().tolist(), 7 * i % 50, 50 - 6 * i % 50)
        assert wait_for_prediction(page, before) == str(expected[i]), i
    assert (expected == y[:8]).all()


def test_errors_from_the_server_are_shown(page):
    clear(page)
    page.execute_script("window.xpnetServe.predict()")  # a blank canvas
    WebDriverWait(page, 30).until(lambda d: "blank" in d.find_element(By.ID, "status").text)
    assert page.find_element(By.ID, "prediction").text == "-"
