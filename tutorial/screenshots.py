"""The tutorial's pictures of the waterfalls, from a real run: one command makes them all.

    python -m tutorial.screenshots

Runs the demo's variants once, writes their waterfalls as `python demo.py --html FILE` does,
and has headless Chromium photograph the pages into tutorial/images/: broken-and-fixed.png
(the two side by side) and all-variants.png (all four: broken and fixed on top, the half
fixes below). Needs Debian's `chromium` package (apt-get install chromium). Look at the
pictures before you commit them.
"""

import argparse
import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"
# Each picture: its file in IMAGES, and the variants it shows side by side.
PICTURES = {
    "broken-and-fixed.png": ("broken", "fixed"),
    "all-variants.png": ("broken", "fixed", "inject-only", "call-site"),
}
WIDTH = 1280  # CSS pixels: two variants side by side, every span name whole
SCALE = 2  # device pixels per CSS pixel: sharp on high-density screens, and when zoomed
# Headless, as root, and quiet: without the background-networking flags, chromium dials out
# at start-up, and where that is refused it can hang.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)
# One chromium run takes 1 to 3 s here; a busy machine gets ample margin, a hang an end.
DEADLINE = 60.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ChromiumFailed(RuntimeError):
    pass


def find_chromium():
    """The chromium executable, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(args, deadline=DEADLINE):
    """Run headless chromium with ARGS on a fresh profile; return its stdout. Raises
    ChromiumFailed when it is missing, fails, or is still running after DEADLINE seconds."""
    executable = find_chromium()
    if executable is None:
        raise ChromiumFailed("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-",
                                     ignore_cleanup_errors=True) as profile:
        # A session of its own: its helper processes (zygote, renderer) end with it.
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            _end_group(process)
            try:
                process.communicate(timeout=10)  # reap it
            except subprocess.TimeoutExpired:
                pass  # a process outside its group holds its output open: leave it
            raise ChromiumFailed(f"chromium still running after {deadline:g} s: {args}") from None
        finally:
            _end_group(process)
    if process.returncode != 0:
        raise ChromiumFailed(f"chromium exited with {process.returncode}: {err[-2000:]}")
    return out


def _end_group(process):
    """Kill what is left of the process group chromium led (by its id), if anything."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def dump_dom(page, width=WIDTH):
    """The DOM chromium built from the HTML file PAGE, serialised."""
    return run_chromium([f"--window-size={width},800", "--dump-dom", Path(page).as_uri()])


def probe(page, expression, width=WIDTH, height=800):
    """What the JavaScript EXPRESSION (JSON-serialisable) evaluates to once chromium has laid
    out the HTML file PAGE in a WIDTH x HEIGHT window. The page carries no script: a copy of
    it, with one more line, writes the value into the DOM that chromium dumps."""
    text = Path(page).read_text(encoding="utf-8")
    script = (
        "<script>document.documentElement.setAttribute('data-probe', "
        f"JSON.stringify((() => {expression})()));</script>"
    )
    with tempfile.TemporaryDirectory(prefix="probe-") as folder:
        copy = Path(folder, "page.html")
        copy.write_text(text.replace("</body>", script + "</body>"), encoding="utf-8")
        dom = run_chromium([f"--window-size={width},{height}", "--dump-dom", copy.as_uri()])
    found = re.search(r'data-probe="([^"]*)"', dom)
    if not found:
        raise ChromiumFailed("chromium did not run the probe: is the page whole?")
    return json.loads(html.unescape(found.group(1)))


def page_height(page, width=WIDTH):
    """How tall PAGE lays out at WIDTH CSS pixels (in a short window: no stretching)."""
    return probe(page, "Math.ceil(document.documentElement.getBoundingClientRect().height)",
                 width, height=100)


def screenshot(page, png, width=WIDTH, height=None, scale=SCALE):
    """Photograph the HTML file PAGE at WIDTH CSS pixels, the whole page unless HEIGHT is
    given, into PNG; return the picture's (width, height) in pixels."""
    height = page_height(page, width) if height is None else height
    png = Path(png).resolve()
    run_chromium([
        f"--window-size={width},{height}", f"--force-device-scale-factor={scale}",
        f"--screenshot={png}", Path(page).as_uri(),
    ])
    return png_size(png)


def png_size(path):
    """(width, height) of the PNG file at PATH; ValueError when it is not a PNG."""
    with open(path, "rb") as image:
        head = image.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    if find_chromium() is None:
        print("needs chromium: apt-get install chromium (Debian's package)", file=sys.stderr)
        return 1
    import demo  # the demo's own run and page: the pictures show what readers will see

    variants = sorted({v for shown in PICTURES.values() for v in shown}, key=demo.VARIANTS.index)
    spans = demo.run_variants(variants)
    IMAGES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        for name, shown in PICTURES.items():
            page = Path(folder, name).with_suffix(".html")
            demo.write_page(page, {variant: spans[variant] for variant in shown})
            width, height = screenshot(page, IMAGES / name)
            print(f"wrote {os.path.relpath(IMAGES / name)} ({width}x{height} pixels): "
                  f"{' and '.join(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
