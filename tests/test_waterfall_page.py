"""The waterfall page (tracetools/waterfall.py, `demo.py --html`) in a real browser: headless
Chromium lays out a page made from real traces of every variant, at a laptop's size and at a
large screen's: broken and fixed side by side in the top row, whole without scrolling, the
half fixes below, every bar on one time scale, the orphans the doctor finds marked; and it
photographs the page.

Needs Debian's chromium (apt-get install chromium): skipped without it, failed in CI."""

import os
import sys
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest

import demo
from harness.polling import poll_until
from tests.support.traces import (
    EMAIL_RUN,
    MS,
    REQUEST,
    RUN,
    complete,
    connected,
    made,
    names,
    orphaned,
)
from tracetools.doctor import diagnose
from tracetools.view import verdict
from tracetools.waterfall import MIN_BAR_PX, page
from tutorial import screenshots
from tutorial.screenshots import (
    PNG_SIGNATURE,
    SCALE,
    dump_dom,
    find_chromium,
    page_height,
    png_size,
    probe,
    screenshot,
)

VARIANTS = tuple(demo.PAGE_ORDER)  # as the page shows them: broken and fixed first
WIDTH = 1280  # CSS pixels: the tutorial's pictures
# Window sizes, in CSS pixels: a laptop's screen, and a large one.
SIZES = {"laptop": (1366, 768), "desktop": (1920, 1080)}


class Elements(HTMLParser):
    """Every element of a page as (tag, attributes, the text inside it)."""

    def __init__(self, text):
        super().__init__()
        self.found, self._open = [], []
        self.feed(text)

    def handle_starttag(self, tag, attributes):
        element = (tag, dict(attributes), [])
        self.found.append(element)
        if tag not in ("meta", "br", "wbr", "img", "input", "link"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, _, text in self._open:
            text.append(data)

    def having(self, css_class=None, **attributes):
        return [
            (tag, attrs, "".join(text)) for tag, attrs, text in self.found
            if (css_class is None or css_class in attrs.get("class", "").split())
            and all(attrs.get(k.replace("_", "-")) == v for k, v in attributes.items())
        ]


# Without chromium: the page as text.

def test_every_name_and_service_is_escaped():
    def page_of(name, service, variant, caption, title):
        spans = [made(name, "k1", "k", end=10, service=service),
                 made(f"celery.run {name}", "k2", "k", "k1", 2, 8, kind="CONSUMER",
                      service=service)]
        return page([(variant, caption, spans)], title=title)

    hostile = ('<img src=x onerror="alert(1)">&amp;</div>', '<b>"web"</b>', "<i>v</i>",
               "<u>caption</u><script>x</script>", "<h1>title</main>")
    tame = ("name", "web", "v", "caption", "title")
    structure = [(tag, sorted(attributes)) for tag, attributes, _ in Elements(page_of(*tame)).found]
    elements = Elements(page_of(*hostile))
    # The same elements with the same attributes: nothing the names carried became markup.
    assert [(tag, sorted(attributes)) for tag, attributes, _ in elements.found] == structure
    [row] = elements.having("span", data_span_id="k1")
    assert hostile[0] in row[2] and row[1]["data-service"] == hostile[1]
    assert elements.having("variant", data_variant=hostile[2])


def test_orphans_are_marked_by_class_attribute_and_a_visible_mark():
    elements = Elements(page([("broken", "", orphaned()), ("fixed", "", connected())]))
    [broken] = elements.having("variant", data_variant="broken")
    assert (broken[1]["data-orphans"], broken[1]["data-traces"]) == ("1", "2")
    [(_, attributes, text)] = elements.having("orphan")
    assert attributes["data-span-id"] == "c1" and attributes["data-orphan"] == "not-injected"
    assert "orphaned: not-injected" in text
    assert len(elements.having("span", data_service="orders-worker")) == 4


def test_an_orphaned_trace_is_drawn_on_the_requests_time_scale_where_it_ran():
    # orphaned(): the request 0-40 ms, then the worker's trace of its own 60-100 ms;
    # connected(): the same spans, joined up. Both variants end at 100 ms.
    elements = Elements(page([("broken", "", orphaned()), ("fixed", "", connected())]))
    [(_, main, _)] = elements.having("variants")
    assert main["data-scale-ns"] == str(100 * MS)
    [(_, _, text)] = elements.having("orphan")
    assert "+60.0 ms" in text  # from the request's start, not from its own trace's
    bars = {}
    for _, attributes, _ in elements.having("bar"):
        bars.setdefault(attributes["title"].split(" (")[0], []).append(attributes["style"])
    run = bars["celery.run tasks.process_order"]
    assert run[0].startswith("left:min(60.00%,") and "width:40.00%" in run[0]
    # The same moment stands at the same place in both panels.
    for name in ("POST /orders", "celery.run tasks.process_order", "charge_payment"):
        broken, fixed = bars[name]
        assert broken == fixed, name


# With chromium: real traces.

@pytest.fixture(scope="module")
def chromium():
    if find_chromium() is None:
        reason = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must install it")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def real_spans(deploy):
    """{variant: the spans of one order}, from the session's real deployments."""
    deployments = {variant: deploy(variant) for variant in VARIANTS}
    since = time.time_ns()
    for deployment in deployments.values():
        deployment.post_order()
    return {
        variant: deployment.wait_for_spans(
            lambda spans: {REQUEST, RUN, EMAIL_RUN, "render_email"} <= names(spans)
            and complete(spans),
            since,
        )
        for variant, deployment in deployments.items()
    }


@pytest.fixture(scope="module")
def real_page(chromium, real_spans, tmp_path_factory):
    path = tmp_path_factory.mktemp("waterfall") / "page.html"
    demo.write_page(path, real_spans)  # what `python demo.py --html FILE` writes
    return path


def test_chromium_builds_every_variant_with_the_doctors_orphans_marked(real_page, real_spans):
    elements = Elements(dump_dom(real_page, WIDTH))
    sections = elements.having("variant")
    assert [attributes["data-variant"] for _, attributes, _ in sections] == list(VARIANTS)
    for variant, spans in real_spans.items():
        counts = verdict(spans)
        [(_, attributes, text)] = elements.having("variant", data_variant=variant)
        assert {k: int(attributes[f"data-{k}"]) for k in counts} == counts
        ids = {s["span_id"] for s in spans}
        rows = [row for row in elements.having("span") if row[1]["data-span-id"] in ids]
        assert len(rows) == len(ids)
        marked = {row[1]["data-span-id"]: row[1].get("data-orphan")
                  for row in rows if "orphan" in row[1]["class"].split()}
        assert marked == {o["span_id"]: o["cause"] for o in diagnose(spans)["orphans"]}
        for _, attributes, row_text in rows:
            cause = marked.get(attributes["data-span-id"])
            assert (f"orphaned: {cause}" in row_text) if cause else ("orphaned" not in row_text)
    orphan_names = {
        s["name"] for s in real_spans["broken"]
        if s["span_id"] in {o["span_id"] for o in diagnose(real_spans["broken"])["orphans"]}
    }
    assert orphan_names == {RUN, EMAIL_RUN}
    assert verdict(real_spans["fixed"])["orphans"] == 0


LAYOUT = """(() => {
  const box = element => { const b = element.getBoundingClientRect();
    return {left: b.left, top: b.top, right: b.right, bottom: b.bottom, width: b.width}; };
  const main = document.querySelector('main');
  return {
    window: [innerWidth, innerHeight], scale: Number(main.dataset.scaleNs),
    sections: [...document.querySelectorAll('section.variant')].map(section => ({
      variant: section.dataset.variant, origin: section.dataset.originNs, box: box(section),
      verdict: box(section.querySelector('.verdict')),
      axis: box(section.querySelector('.axis')),
      ticks: [...section.querySelectorAll('.axis span')].map(tick => [tick.innerText, box(tick)]),
      heads: [...section.querySelectorAll('.trace-head')].map(box),
      rows: [...section.querySelectorAll('.span')].map(row => ({
        id: row.dataset.spanId, orphan: row.dataset.orphan || null, box: box(row),
        edge: getComputedStyle(row).borderLeftColor,
        shade: getComputedStyle(row).backgroundColor,
        track: box(row.querySelector('.track')), bar: box(row.querySelector('.bar')),
        mark: row.querySelector('.mark') && [row.querySelector('.mark').innerText,
                                             box(row.querySelector('.mark'))],
      })),
    })),
  };
})()"""


def viewport(page, size):
    """The [width, height] of what a window of SIZE shows of PAGE: like a browser, chromium
    keeps a strip of the window for its frame (143 px of 768 here). Its bottom is the fold."""
    width, height = size
    shown = probe(page, "[innerWidth, innerHeight]", width, height)
    assert shown[0] == width and height / 2 < shown[1] <= height
    return shown


@pytest.fixture(scope="module", params=list(SIZES.values()), ids=list(SIZES))
def layout(request, real_page):
    """Where chromium puts the page's parts in a window of one of SIZES; "window" is the
    viewport, as viewport() measures it."""
    found = probe(real_page, LAYOUT, *request.param)
    assert found["window"] == viewport(real_page, request.param)
    return found


def test_chromium_puts_broken_next_to_fixed_and_the_half_fixes_below(layout):
    width, _ = layout["window"]
    broken, fixed, *others = layout["sections"]
    assert (broken["variant"], fixed["variant"]) == ("broken", "fixed")
    # One row: the same top, broken on the left, fixed on its right, both inside the window.
    assert broken["box"]["top"] == fixed["box"]["top"]
    assert broken["box"]["right"] <= fixed["box"]["left"]
    assert fixed["box"]["right"] <= width
    assert broken["box"]["width"] == fixed["box"]["width"]
    pair_bottom = max(broken["box"]["bottom"], fixed["box"]["bottom"])
    assert [other["variant"] for other in others] == ["inject-only", "call-site"]
    for other in others:
        assert other["box"]["top"] >= pair_bottom, other["variant"]
    assert others[0]["box"]["top"] == others[1]["box"]["top"]


def test_chromium_shows_broken_and_fixed_whole_without_scrolling(layout):
    # What a reader must see before scrolling, on a laptop as on a large screen: both
    # verdicts, and every trace and span of both variants, orphan marks included: the
    # comparison the page is for, whole. The half fixes may start below the fold.
    _, height = layout["window"]
    for section in layout["sections"][:2]:
        assert section["verdict"]["bottom"] <= height, section["variant"]
        for head in section["heads"]:
            assert head["bottom"] <= height, (section["variant"], head)
        for row in section["rows"]:
            assert row["box"]["bottom"] <= height, (section["variant"], row["id"], row["box"])


def test_chromium_draws_every_bar_on_one_time_scale_where_its_span_ran(layout, real_spans):
    scale = layout["scale"]
    lengths = [max(s["end_ns"] for s in spans) - min(s["start_ns"] for s in spans)
               for spans in real_spans.values()]
    # The longest variant fits the scale, and is not squeezed into a corner of it.
    assert max(lengths) <= scale < 2 * max(lengths)
    tracks = [row["track"] for section in layout["sections"] for row in section["rows"]]
    # Every track as wide as every other, in every panel: one millisecond, as many pixels.
    assert max(t["width"] for t in tracks) - min(t["width"] for t in tracks) < 0.5
    for section in layout["sections"]:
        spans = {s["span_id"]: s for s in real_spans[section["variant"]]}
        # 0 is the variant's first span; a trace of its own is placed by its clock times.
        origin = min(s["start_ns"] for s in spans.values())
        assert int(section["origin"]) == origin
        # The axis stands over the tracks, each label where its milliseconds are, none over
        # the next.
        axis = section["axis"]
        assert section["ticks"][0][0] == "0"
        for label, tick in section["ticks"]:
            assert abs(tick["left"] - axis["left"] - axis["width"] * int(label) * MS / scale) < 1
        for (_, tick), (_, following) in zip(section["ticks"], section["ticks"][1:]):
            assert tick["right"] <= following["left"]
        for row in section["rows"]:
            track, bar, s = row["track"], row["bar"], spans[row["id"]]
            assert abs(track["left"] - axis["left"]) < 0.5
            assert abs(track["width"] - axis["width"]) < 0.5
            expected_left = track["left"] + track["width"] * (s["start_ns"] - origin) / scale
            # Off by at most the width a span too short to see is given, at the track's end.
            assert abs(bar["left"] - expected_left) <= MIN_BAR_PX + 0.5, (s["name"], bar, track)
            expected_width = track["width"] * (s["end_ns"] - s["start_ns"]) / scale
            assert abs(bar["width"] - max(MIN_BAR_PX, expected_width)) < 1, (s["name"], bar)
            assert bar["right"] <= track["right"] + 1
            if row["orphan"]:
                text, mark = row["mark"]
                assert text == f"orphaned: {row['orphan']}" and mark["width"] > 0
        plain = [row for row in section["rows"] if not row["orphan"]]
        for row in section["rows"]:
            if row["orphan"]:
                assert row["edge"] not in {other["edge"] for other in plain}
                assert row["shade"] not in {other["shade"] for other in plain}
    broken, fixed = layout["sections"][:2]
    assert sum(bool(row["orphan"]) for row in broken["rows"]) == 2
    assert not any(row["orphan"] for row in fixed["rows"])


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_chromium_photographs_what_a_reader_sees_first(real_page, tmp_path, size):
    # chromium photographs the whole window: make it the size of what a reader's shows.
    shown = tuple(viewport(real_page, size))
    png = tmp_path / "fold.png"
    assert screenshot(real_page, png, *shown, scale=1) == shown
    # A blank page compresses to a few kilobytes; two waterfalls with their text do not.
    assert png.stat().st_size > 50_000


def test_chromium_photographs_the_whole_page(real_page, tmp_path):
    height = page_height(real_page, WIDTH)
    assert 300 < height < 3000
    png = tmp_path / "waterfalls.png"
    assert screenshot(real_page, png, WIDTH, height) == (WIDTH * SCALE, height * SCALE)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert png_size(png) == (WIDTH * SCALE, height * SCALE)
    assert png.stat().st_size > 50_000


def test_the_page_needs_nothing_from_the_network(real_page):
    text = real_page.read_text()
    # One file: styles inline, and no script, font, image or style sheet to fetch.
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_a_chromium_that_hangs_is_ended_with_every_process_it_started(monkeypatch, tmp_path):
    # A stand-in that never finishes, with a helper process of its own, both marked by a token.
    token = f"stand-in-{uuid.uuid4().hex}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(600)' {token}"
    fake = tmp_path / "chromium"
    fake.write_text(f"#!/bin/sh\n{sleeper} &\nexec {sleeper}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(screenshots, "find_chromium", lambda: str(fake))
    with pytest.raises(screenshots.ChromiumFailed, match="still running after 1 s"):
        screenshots.run_chromium(["--dump-dom", "about:blank"], deadline=1)

    def alive():
        """The stand-in's processes that have not ended (a zombie has)."""
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if token.encode() in (proc / "cmdline").read_bytes() \
                        and (proc / "stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                    found.append(proc.name)
            except (OSError, IndexError):
                continue  # not a process, or one that just ended
        return found

    poll_until(lambda: not alive(), 10, f"the end of the stand-in's processes {alive()}")
