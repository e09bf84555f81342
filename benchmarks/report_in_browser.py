"""Open an HTML report in headless Chromium: a screenshot, and the page as Chromium laid it out, checked.

    python benchmarks/report_in_browser.py REPORT.html --png SHOT.png [--width 1400 --height 2400]

Chromium (Debian's package `chromium`) renders the page to a PNG and dumps the DOM
it built. The check: the page is not blank (the screenshot has text on a light
background), and Chromium's DOM holds the same headings, in the same order, and
the same number of tables as the HTML file says. Started as the tool library's
notes advise on a closed network: headless, no sandbox (as root), no GPU, no
background networking, a new empty profile.

Exit codes: 0 checked; 1 a check failed (the lines say which); 77 no Chromium here.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NO_CHROMIUM = 77
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def chromium() -> str | None:
    """The Chromium binary on PATH, if any."""
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _run(binary: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="harness-chromium-") as profile:
        done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}")
    return done.stdout


def screenshot(binary: str, page: Path, png: Path, width: int, height: int) -> None:
    _run(binary, f"--window-size={width},{height}", f"--screenshot={png.resolve()}", page.resolve().as_uri())


def rendered_dom(binary: str, page: Path) -> str:
    return _run(binary, "--dump-dom", page.resolve().as_uri())


def outline(markup: str) -> tuple[list[str], int]:
    """The page's headings (h1-h3, their text) in order, and how many tables it has."""
    headings = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<h[123][^>]*>(.*?)</h[123]>", markup, flags=re.S)]
    return headings, len(re.findall(r"<table\b", markup))


def ink(png: Path) -> tuple[float, float]:
    """(share of pixels that are dark, share that are near white): text on a page, or a blank one."""
    from PIL import Image

    gray = Image.open(png).convert("L")
    histogram = gray.histogram()
    total = sum(histogram)
    return sum(histogram[:128]) / total, sum(histogram[240:]) / total


def check(page: Path, png: Path, width: int = 1400, height: int = 2400) -> list[str]:
    """Every failed check, one line each (empty: the page rendered as its HTML says)."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium on PATH (Debian: apt-get install chromium)")
    screenshot(binary, page, png, width, height)
    problems = []
    dark, light = ink(png)
    if not (dark > 0.002 and light > 0.5):
        problems.append(f"{png}: looks blank ({dark:.2%} dark pixels, {light:.2%} near-white)")
    expected, laid_out = outline(page.read_text(encoding="utf-8")), outline(rendered_dom(binary, page))
    if laid_out != expected:
        problems.append(f"Chromium's page differs from the HTML: headings {laid_out[0]} and {laid_out[1]} tables, "
                        f"expected {expected[0]} and {expected[1]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    if chromium() is None:
        print("report_in_browser: no Chromium on PATH (Debian: apt-get install chromium); nothing checked", file=sys.stderr)
        return NO_CHROMIUM
    problems = check(args.report, args.png, args.width, args.height)
    for line in problems:
        print(f"PROBLEM: {line}")
    headings, tables = outline(args.report.read_text(encoding="utf-8"))
    print(f"report_in_browser: {args.png} written; {len(headings)} headings and {tables} tables as the HTML says"
          if not problems else f"report_in_browser: {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
