"""bundle.report rendered in headless Chromium: the first screen shows a figure and nothing is wider than the window.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them) and selenium (requirements-dev.txt);
skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from bundle.report import write_html_report

WIDTH, HEIGHT = 1280, 800  # a typical laptop window
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# as root and with the network closed: no sandbox, no GPU, no first-run, update or sync traffic
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    f"--window-size={WIDTH},{HEIGHT}",
)

# every element drawn beyond the window's right edge, unless a scrolling box that fits the window clips it
# (the content of a closed <details> is laid out but not shown: it is checked with the details open)
OVERFLOWING = """
const width = window.innerWidth, found = [];
for (const el of document.querySelectorAll('body *')) {
  const folded = el.parentElement.closest('details:not([open])');
  if (folded && !el.closest('summary')) continue;
  const box = el.getBoundingClientRect();
  if ((box.width === 0 && box.height === 0) || box.right <= width + 0.5) continue;
  let clipped = false;
  for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
    if (getComputedStyle(up).overflowX !== 'visible') {
      clipped = up.getBoundingClientRect().right <= width + 0.5;
      break;
    }
  }
  if (!clipped) found.push(`${el.tagName.toLowerCase()}.${el.className} right=${Math.round(box.right)}`);
}
return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width, elements: found.slice(0, 10)};
"""
# the part of each picture inside the first screen, in CSS pixels
FIRST_SCREEN_IMAGES = """
return Array.from(document.images).map(img => {
  const box = img.getBoundingClientRect();
  const w = Math.min(box.right, window.innerWidth) - Math.max(box.left, 0);
  const h = Math.min(box.bottom, window.innerHeight) - Math.max(box.top, 0);
  return {alt: img.alt, loaded: img.complete && img.naturalWidth > 0, visibleWidth: w, visibleHeight: h};
});
"""
MIN_VISIBLE = (300, 200)  # a figure one can read, not a thumbnail or a sliver at the bottom of the screen


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (requirements-dev.txt)")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="report-chromium-")  # a fresh profile: nothing remembered between runs
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    # the viewport itself at WIDTH x HEIGHT, whatever the headless window adds around it
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def synthetic_results(folder):
    """A results folder like docs/results, small: a curve and a grid, a markdown table, a wide CSV, long floats."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (270, 420, 3), dtype=np.uint8))
    picture.save(folder / "learning_curve_demo.png")
    Image.fromarray(rng.integers(0, 255, (192, 864, 3), dtype=np.uint8)).save(folder / "saliency_demo.png")
    (folder / "learning_curve_demo.md").write_text(
        "# Learning curve: demo\n\n| method | n = 25 | n = 50 |\n|---|---:|---:|\n"
        "| scratch | 0.512 ± 0.019 (3) | 0.521 ± 0.024 (3) |\n| medtex | 0.688 ± 0.020 (3) | 0.717 ± 0.020 (3) |\n"
    )
    columns = ["task", "method", "n_labeled", "seed", "auc", "accuracy"] + [f"extra_column_{i}" for i in range(30)]
    rows = [",".join(columns)]
    for method in ("scratch", "medtex"):
        for n in (25, 50):
            for seed in range(3):
                values = [f"{v!r}" for v in rng.random(2 + 30)]
                rows.append(",".join(["demo", method, str(n), str(seed), *values]))
    (folder / "learning_curve_demo.csv").write_text("\n".join(rows) + "\n")
    (folder / "saliency_demo.csv").write_text(
        "method,deletion_auc,insertion_auc,maps_per_second,n_images\n"
        "medtex,0.24777735769748688,0.2607279121875763,194.44159061094282,96\n"
        "gradcam,0.20078910887241364,0.4671478569507599,8.674683098179123,96\n"
    )
    long_floats = {f"speedup_vs_method_{i}": float(rng.random() * 1000) for i in range(60)}
    provenance = {"created": "2026-01-01T00:00:00+00:00", "cwd": "/home/someone/a/very/long/path/" + "x" * 200}
    provenance |= {"command": "python scripts/learning_curve.py " + " ".join(f"--flag{i} {i}" for i in range(80))}
    provenance |= {"weights_sha256": {"teacher": "f" * 64 * 4}, "nested": long_floats}
    (folder / "learning_curve_demo.json").write_text(json.dumps(provenance, indent=2))
    (folder / "benchmark.json").write_text(json.dumps(long_floats, indent=2))
    (folder / "notes.txt").write_text("a line without spaces " + "y" * 600)
    return folder


def check_page(driver, page):
    """Open ``page``; assert a figure fills part of the first screen and nothing overflows, details closed and open."""
    driver.get(page.as_uri())
    assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == [WIDTH, HEIGHT]
    images = driver.execute_script(FIRST_SCREEN_IMAGES)
    assert images and all(image["loaded"] for image in images), images
    seen = [i for i in images if i["visibleWidth"] >= MIN_VISIBLE[0] and i["visibleHeight"] >= MIN_VISIBLE[1]]
    assert seen, f"no figure of at least {MIN_VISIBLE} px on the first {WIDTH}x{HEIGHT} screen: {images}"
    for state in ("closed", "open"):
        if state == "open":  # the raw tables and provenance as a reader who unfolds them sees them
            driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        found = driver.execute_script(OVERFLOWING)
        assert found["scrollWidth"] <= found["innerWidth"], (state, found)
        assert not found["elements"], (state, found)


def test_first_screen_shows_a_figure_and_nothing_is_wider_than_the_window(browser, tmp_path):
    page = write_html_report(synthetic_results(tmp_path / "results"), tmp_path / "report.html", "Synthetic results")
    html = page.read_text()
    assert "/home/someone" not in html  # absolute paths are not shown ...
    assert "…/" + "x" * 200 in html  # ... but their last component is
    start = time.perf_counter()
    check_page(browser, page)
    assert time.perf_counter() - start < 60
