"""The report page in a real browser (headless Chromium): no console error, no network request,
every image decodes; screenshots of the screen, the whole page and print are kept.

Screenshots go to the test's temporary folder, or to $MIMREG_SCREENSHOTS when that is set.
Skips when no chromium is installed, except where $MIMREG_REQUIRE_BROWSER is set (CI).
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import check_page, find_chromium


@pytest.fixture(scope="module")
def chromium():
    if find_chromium() is None:
        if os.environ.get("MIMREG_REQUIRE_BROWSER"):
            pytest.fail("MIMREG_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium on PATH: apt-get install chromium (as .ci/run does) to run the browser test")


def keep(folder: Path) -> Path:
    target = os.environ.get("MIMREG_SCREENSHOTS")
    if target:
        shutil.copytree(folder, target, dirs_exist_ok=True)
        return Path(target)
    return folder


@pytest.mark.usefixtures("chromium")
def test_demo_sized_report_renders_cleanly(study, study_report, tmp_path):
    check = check_page(study_report, tmp_path / "browser")
    shots = keep(tmp_path / "browser")
    print(f"\nscreenshots: {shots}")
    assert check.console_errors == []
    assert check.requests == []
    assert len(check.images) == 4 * 7 + 3 and all(image["ok"] and image["width"] > 100 for image in check.images)
    width, height = Image.open(check.screenshots["screen"]).size
    assert (width, height) == (1366, 900)
    full = Image.open(check.screenshots["full"])
    assert full.size[0] <= 1366 and full.size[1] == check.page_height > 4 * 900  # no sideways scrolling
    assert len(np.unique(np.asarray(full.convert("L").resize((64, 256))))) > 50  # pictures, not a blank page
    assert check.pdf_pages >= 1 + len(study)  # in print, every run starts on its own page


@pytest.mark.usefixtures("chromium")
def test_the_check_sees_errors_requests_and_broken_images(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,iVBORw0KGgoAAAAbroken">'
                   '<img src="http://127.0.0.1:9/missing.png"><script>console.error("boom")</script></body></html>')
    check = check_page(bad, tmp_path / "browser")
    assert "boom" in check.console_errors
    assert check.requests == ["http://127.0.0.1:9/missing.png"]
    assert [image["ok"] for image in check.images] == [False, False]
