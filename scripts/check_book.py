"""Open every page of the built book in headless Debian Chromium (Playwright drives it; no downloaded browser).

On each page it checks what a reader would trip on: a request that leaves file:// (MathJax and the widget
manager are vendored into the build), a stderr, warning or traceback block in an output, a raw repr
(`np.float64(...)`, `tensor(...)`), an image that did not load, and a table wider than the page's text. On the
explorer it moves the tau slider and checks that the figure changes. Screenshots of every page go to
_build/screenshots/ (ignored by git), so the check leaves the tree clean.
Usage: python scripts/check_book.py [/usr/bin/chromium]
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
OUT = ROOT / "_build" / "screenshots"
SKIP = {"genindex.html", "search.html", "py-modindex.html"}
# Chromium flags for this closed network (DESIGN.md section 7): no background connections at start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPRS = ("np.float64(", "np.int64(", "np.float32(", "tensor(", "array(", "<Figure size")
# What a page shows that a reader should not see, found in the rendered DOM.
FINDINGS = """(reprs) => {
  const out = [];
  for (const el of document.querySelectorAll('.output.stderr, .stderr, .output.traceback, .traceback'))
    out.push('stderr/traceback output: ' + el.innerText.slice(0, 120));
  for (const el of document.querySelectorAll('.cell_output pre, .cell_output .output'))
    for (const r of reprs) if (el.innerText.includes(r)) out.push('raw repr ' + r + ': ' + el.innerText.slice(0, 120));
  for (const el of document.querySelectorAll('.cell_output'))
    if (/Warning:|WARNING|UserWarning|recompil/.test(el.innerText))
      out.push('warning text: ' + el.innerText.slice(0, 120));
  for (const img of document.querySelectorAll('img'))
    if (img.offsetParent !== null && !(img.complete && img.naturalWidth > 0))
      out.push('image not loaded: ' + img.src.slice(0, 120));
  const main = document.querySelector('main, .bd-article, article');
  const width = main ? main.getBoundingClientRect().width : window.innerWidth;
  for (const t of document.querySelectorAll('.cell_output table')) {
    const w = t.getBoundingClientRect().width;
    if (w > width + 2) out.push('table wider than the page (' + Math.round(w) + ' px > ' + Math.round(width) + ' px)');
  }
  return out;
}"""
VISIBLE_IMAGE = """() => { const imgs = [...document.querySelectorAll('.jupyter-widgets img')]
  .filter(i => i.offsetParent !== null); return imgs.length ? imgs[0].src.slice(-200) : null; }"""


def pages() -> list[Path]:
    if not (HTML / "index.html").is_file():
        sys.exit(f"check-book: {HTML / 'index.html'} is missing; run `make book` first")
    return sorted(p for p in HTML.rglob("*.html") if p.name not in SKIP and "_static" not in p.parts
                  and "_sources" not in p.parts and p.name != "index.html")


def explorer_reacts(page) -> bool:
    handle = page.locator(".jupyter-widgets .noUi-handle").first
    handle.wait_for(state="visible", timeout=30_000)
    handle.scroll_into_view_if_needed()
    before = page.evaluate(VISIBLE_IMAGE)
    page.screenshot(path=OUT / "explorer_before.png")
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_timeout(500)
    after = page.evaluate(VISIBLE_IMAGE)
    page.screenshot(path=OUT / "explorer_after.png")
    return before is not None and before != after


def main(chromium: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    external: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else external.append(r.url))
        checked = pages()
        for path in checked:
            rel = path.relative_to(HTML).as_posix()
            n_ext = len(external)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            page.wait_for_timeout(200)
            problems += [f"{rel}: {f}" for f in page.evaluate(FINDINGS, list(REPRS))]
            problems += [f"{rel}: network request {u}" for u in external[n_ext:]]
            page.screenshot(path=OUT / (rel.replace("/", "__").removesuffix(".html") + ".png"), full_page=True)
            if rel == "notebooks/08_explorer.html" and not explorer_reacts(page):
                problems.append(f"{rel}: the explorer's figure did not change when the tau slider moved")
        browser.close()
    if problems:
        sys.exit("check-book: " + str(len(problems)) + " problems:\n  " + "\n  ".join(problems))
    print(f"check-book: {len(checked)} pages clean (no network requests, no stderr, warnings or raw reprs, every "
          f"image loaded, tables fit); the explorer reacts; screenshots in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/chromium")
