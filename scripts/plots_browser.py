"""Did every plot of a `dvc plots show/diff` page draw? Checked in real headless Chromium, offline.

    python scripts/plots_browser.py plots_html/index.html [--screenshot shot.png]

CI tooling (make verify, tests/test_plots_browser.py), not part of the library.

Chromium opens the page from disk with every network request refused (a dead proxy and a
resolver that resolves nothing), runs its JavaScript, and dumps the DOM. A vega plot counts as
drawn when its `vegaEmbed('#id', ...)` target holds a `<canvas>` or `<svg>` with a non-zero size,
which vega creates only after the spec parsed and the dataflow ran; an image plot when its file
decodes. A screenshot of the page must not be blank. With DVC's default template (vega from a
CDN) nothing draws offline, which is what this check exists to catch.
"""

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from flower_model.errors import FlowerModelError

EMBED_TARGET = re.compile(r"vegaEmbed\(\s*['\"]#([^'\"]+)['\"]")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI containers run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--proxy-server=127.0.0.1:9",  # the discard port: any HTTP(S) request fails at once
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
)
# Virtual time lets the page's scripts and timers finish without waiting in real time.
VIRTUAL_TIME_BUDGET_MS = 20_000
WINDOW_WIDTH, WINDOW_HEIGHT_PER_PLOT = 1280, 600
CHROMIUM_TIMEOUT_S = 120
INK_LEVEL = 240  # a grey level below this (0-255) is ink, not background
MIN_INK_SHARE = 0.01  # a page with less ink than this counts as blank


class PlotsRenderError(FlowerModelError):
    """Chromium missing, or a plot page that does not render."""


@dataclass
class RenderReport:
    expected: list[str]  # vegaEmbed target ids, in page order
    drawn: list[str]  # those that hold a drawn canvas/svg
    images: int  # image plots (<img src=static/...>) whose files decode
    ink_share: float  # share of non-background pixels in the screenshot
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and self.ink_share >= MIN_INK_SHARE

    def summary(self) -> str:
        return (
            f"{len(self.drawn)}/{len(self.expected)} vega plots drew, {self.images} images, "
            f"screenshot ink {self.ink_share:.1%}"
            + (f"; not drawn: {', '.join(self.missing)}" if self.missing else "")
        )


class _DrawnTargets(HTMLParser):
    """Collect which element ids contain a sized canvas or svg (vega's output)."""

    def __init__(self, targets: set[str]):
        super().__init__()
        self.targets, self.open_targets, self.drawn = targets, [], set()
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.depth += 1
        if values.get("id") in self.targets:
            self.open_targets.append((values["id"], self.depth))
        sized = int(values.get("width") or 0) > 0 and int(values.get("height") or 0) > 0
        if tag in ("canvas", "svg") and sized:
            self.drawn.update(target for target, _ in self.open_targets)

    def handle_endtag(self, tag):
        self.open_targets = [
            (name, level) for name, level in self.open_targets if level < self.depth
        ]
        self.depth -= 1


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, *OFFLINE_FLAGS, f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *args],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=False,
    )


def _ink_share(screenshot: Path) -> float:
    from PIL import Image

    with Image.open(screenshot) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
        return sum(histogram[:INK_LEVEL]) / (grey.width * grey.height)


def _decodable_images(html: Path, page: str) -> int:
    from PIL import Image

    count = 0
    for source in re.findall(r'<img src="(static/[^"]+)"', page):
        with Image.open(html.parent / source) as image:
            image.verify()
        count += 1
    return count


def check_rendered(html: Path, screenshot: Path, browser: str | None = None) -> RenderReport:
    """Open `html` in headless Chromium offline; report which plots drew."""
    browser = browser or find_chromium()
    if browser is None:
        raise PlotsRenderError(
            "no Chromium found: install Debian's `chromium` package (apt-get install chromium)"
        )
    page = html.read_text(encoding="utf-8")
    expected = EMBED_TARGET.findall(page)
    url = html.resolve().as_uri()
    dumped = _chromium(browser, "--dump-dom", url)
    if dumped.returncode != 0:
        raise PlotsRenderError(f"chromium failed on {html}: {dumped.stderr[-2000:]}")
    parser = _DrawnTargets(set(expected))
    parser.feed(dumped.stdout)
    height = WINDOW_HEIGHT_PER_PLOT * max(1, len(expected) + page.count("<img "))
    shot = _chromium(
        browser, f"--window-size={WINDOW_WIDTH},{height}", f"--screenshot={screenshot}", url
    )
    if shot.returncode != 0 or not screenshot.is_file():
        raise PlotsRenderError(f"chromium took no screenshot of {html}: {shot.stderr[-2000:]}")
    drawn = [target for target in expected if target in parser.drawn]
    return RenderReport(
        expected=expected,
        drawn=drawn,
        images=_decodable_images(html, page),
        ink_share=_ink_share(screenshot),
        missing=[target for target in expected if target not in parser.drawn],
    )


def main() -> None:
    import fire

    def check(html: str, screenshot: str = "plots_screenshot.png") -> None:
        report = check_rendered(Path(html), Path(screenshot))
        print(report.summary())
        sys.exit(0 if report.ok and report.expected else 1)

    fire.Fire(check)


if __name__ == "__main__":
    main()
