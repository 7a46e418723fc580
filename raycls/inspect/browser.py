"""Check that a page renders in headless Chromium: its sections exist, every image decodes, and
a screenshot shows it. For tests and bench/bench_report.py; the pages themselves need no browser.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

# Runs in a copy of the page only: counts images that fail to decode and lists section ids.
_PROBE = """<script>
// After "load" every image has loaded or failed; a failed one has no natural width.
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "raycls-check";
  out.textContent = JSON.stringify({
    images: images.length,
    broken_images: images.filter((im) => !im.complete || im.naturalWidth === 0).length,
    sections: [...document.querySelectorAll("section[id]")].map((s) => s.id),
  });
  document.body.appendChild(out);
});
</script>"""
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--hide-scrollbars",
]


def find_chromium() -> str:
    """The Chromium executable; FileNotFoundError saying how to install it otherwise."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Chromium found; install it (apt-get install -y chromium)")


def _run(args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="raycls-chromium-") as profile:
        done = subprocess.run(
            [find_chromium(), *_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def check_page(
    html_file: str | Path,
    sections: Sequence[str],
    screenshot: str | Path,
    width: int = 1280,
    height: int = 2400,
    timeout: float = 120.0,
) -> dict:
    """Render `html_file`: returns images, broken_images, sections found, missing_sections;
    writes a `width` x `height` PNG screenshot of the top of the page to `screenshot`."""
    html_file = Path(html_file).resolve()
    probe = html_file.with_name(f".{html_file.stem}.check.html")
    text = html_file.read_text()
    probe.write_text(text.replace("</body>", _PROBE + "</body>"))
    try:
        dom = _run(["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()], timeout)
    finally:
        probe.unlink()
    match = re.search(r'<pre id="raycls-check">(.*?)</pre>', dom, re.S)
    if match is None:
        raise RuntimeError(f"the page did not finish loading in Chromium: {html_file}")
    result = json.loads(match[1].replace("&quot;", '"').replace("&amp;", "&"))
    result["missing_sections"] = [s for s in sections if s not in result["sections"]]
    screenshot = Path(screenshot).resolve()
    _run(
        [f"--screenshot={screenshot}", f"--window-size={width},{height}", html_file.as_uri()],
        timeout,
    )
    if not screenshot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {screenshot}")
    result["screenshot"] = str(screenshot)
    return result
