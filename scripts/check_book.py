"""Open the built book in headless Debian Chromium (Playwright drives it; no downloaded browser).

Screenshots the first page, the results page and the explorer before and after a slider moves, into
data/screenshots/; fails if the explorer's figure does not change with the slider, or if any page asks
the network for anything (MathJax and the widget manager are vendored into the build).
Usage: python scripts/check_book.py [/usr/bin/chromium]
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
OUT = ROOT / "data" / "screenshots"
# Chromium flags for this closed network (DESIGN.md section 7): no background connections at start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VISIBLE_IMAGE = """() => { const imgs = [...document.querySelectorAll('.jupyter-widgets img')]
  .filter(i => i.offsetParent !== null); return imgs.length ? imgs[0].src.slice(-200) : null; }"""


def _open(page, rel: str) -> None:
    path = HTML / rel
    if not path.is_file():
        sys.exit(f"check-book: {path} is missing; run `make book` first")
    page.goto(path.as_uri())
    page.wait_for_load_state("load")


def main(chromium: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    external: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else external.append(r.url))

        _open(page, "book/intro.html")
        page.screenshot(path=OUT / "intro.png")

        _open(page, "notebooks/06_schedule_ablations.html")
        page.get_by_text("The Pareto plot", exact=False).first.scroll_into_view_if_needed()
        page.mouse.wheel(0, -700)
        page.wait_for_timeout(300)
        page.screenshot(path=OUT / "results.png")

        _open(page, "notebooks/08_explorer.html")
        handle = page.locator(".jupyter-widgets .noUi-handle").first
        handle.wait_for(state="visible", timeout=30_000)
        handle.scroll_into_view_if_needed()
        page.mouse.wheel(0, -250)
        before = page.evaluate(VISIBLE_IMAGE)
        page.screenshot(path=OUT / "explorer_before.png")
        handle.focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        page.wait_for_timeout(500)
        after = page.evaluate(VISIBLE_IMAGE)
        page.screenshot(path=OUT / "explorer_after.png")
        browser.close()
    if before is None or before == after:
        sys.exit("check-book: the explorer's figure did not change when the tau slider moved")
    if external:
        sys.exit(f"check-book: pages asked the network for {len(external)} resources, e.g. {external[:3]}")
    print(f"check-book: screenshots in {OUT.relative_to(ROOT)}; the explorer reacts; no network requests")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/chromium")
