"""``quiesce drill --html``: the page renders in headless Chromium and shows the verdict's data.

Debian's ``chromium`` (``make test`` installs it) opens the page as a file:
a screenshot must show the chart (bars in the outcomes' colours, not a blank
page), and the DOM after the page's script ran must hold what the chart drew,
equal to the verdict ``--json`` printed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drill.png import pixels

#: Bound on one Chromium run (it starts in ~2 s here).
CHROMIUM_TIMEOUT = 30.0
#: The chart's colours (quiesce/drill/html.py): ok, refused.
OK_GREEN = (0x43, 0xA0, 0x47)
REFUSED_RED = (0xE5, 0x39, 0x35)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("Debian's chromium is not installed and `make test` could not install it")
    return found


def _run(chromium: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # As root (the test machines) Chromium needs --no-sandbox; no GPU on a headless VM.
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=True
    )


def test_drill_html_is_one_file_that_fetches_nothing(
    drained_page: tuple[Path, dict[str, Any]],
) -> None:
    path, verdict = drained_page
    text = path.read_text()
    assert path.stat().st_mode & 0o077 == 0  # owner-only, like every file the drill writes
    assert "default-src 'none'" in text  # its CSP forbids any fetch
    for fetch in ("src=", "href=", "url(", "@import", "fetch(", "XMLHttpRequest", "<link"):
        assert fetch not in text, fetch
    embedded = re.search(r'<script type="application/json" id="verdict">(.*?)</script>', text)
    assert embedded is not None
    assert json.loads(embedded.group(1)) == verdict


def test_drill_html_screenshot_shows_the_chart(
    chromium: str, drained_page: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, verdict = drained_page
    shot = tmp_path / "shot.png"
    _run(chromium, f"--screenshot={shot}", "--window-size=1100,900", path.as_uri(), cwd=tmp_path)
    width, height, counts = pixels(shot)
    assert (width, height) == (1100, 900)
    # Bars of requests answered ok, and of those refused once the lone instance had gone.
    assert verdict["total"]["by_kind"].get("refused", 0) > 0
    assert counts[OK_GREEN] > 5_000, counts.most_common(8)
    assert counts[REFUSED_RED] > 500, counts.most_common(8)
    assert len(counts) > 20  # text, axes, bands: not a blank or a one-colour page


def test_drill_html_draws_what_the_verdict_counts(
    chromium: str, drained_page: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, verdict = drained_page
    dom = _run(chromium, "--dump-dom", path.as_uri(), cwd=tmp_path).stdout
    drawn = re.search(r'id="drawn"[^>]*data-requests="(\d+)"', dom)
    assert drawn is not None, dom[-2000:]
    assert int(drawn.group(1)) == verdict["total"]["sent"]
    rows = dict(re.findall(r'<tr data-kind="([^"]+)" data-count="(\d+)"', dom))
    by_kind = {html.unescape(kind): int(count) for kind, count in rows.items()}
    assert by_kind.pop("ok") == verdict["total"]["ok"]
    assert by_kind == verdict["total"]["by_kind"]
    # The signal is marked and the stop's phases are drawn as bands.
    (stop,) = verdict["stops"]
    assert dom.count('class="signal"') == 1
    assert dom.count('class="phase"') == len(stop["phases"]) >= 5
    assert ">drain<" in dom
