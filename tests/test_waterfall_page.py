"""The waterfall page (tracetools/waterfall.py, `demo.py --html`) in a real browser: headless
Chromium lays out a page made from real traces of the broken and the fixed variant; both
render, side by side, with the orphans the doctor finds marked; and it photographs the page.

Needs Debian's chromium (apt-get install chromium): skipped without it, failed in CI."""

import os
import sys
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest
from traces import EMAIL_RUN, REQUEST, RUN, complete, connected, made, names, orphaned

import demo
from harness.polling import poll_until
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

VARIANTS = ("broken", "fixed")
WIDTH = 1280  # CSS pixels: wide enough for the two side by side


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


def test_chromium_builds_both_variants_with_the_doctors_orphans_marked(real_page, real_spans):
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
  return [...document.querySelectorAll('section.variant')].map(section => ({
    variant: section.dataset.variant, box: box(section),
    rows: [...section.querySelectorAll('.span')].map(row => ({
      id: row.dataset.spanId, orphan: row.dataset.orphan || null,
      edge: getComputedStyle(row).borderLeftColor, shade: getComputedStyle(row).backgroundColor,
      track: box(row.querySelector('.track')), bar: box(row.querySelector('.bar')),
      mark: row.querySelector('.mark') && [row.querySelector('.mark').innerText,
                                           box(row.querySelector('.mark'))],
    })),
  }));
})()"""


def test_chromium_lays_them_out_side_by_side_with_bars_where_the_spans_ran(real_page, real_spans):
    layout = probe(real_page, LAYOUT, WIDTH)
    broken, fixed = layout
    assert (broken["variant"], fixed["variant"]) == VARIANTS
    assert broken["box"]["top"] == fixed["box"]["top"]
    assert broken["box"]["right"] <= fixed["box"]["left"]
    assert fixed["box"]["right"] <= WIDTH
    for section in layout:
        spans = {s["span_id"]: s for s in real_spans[section["variant"]]}
        trace_of = {}
        for s in spans.values():
            start, end = trace_of.get(s["trace_id"], (s["start_ns"], s["end_ns"]))
            trace_of[s["trace_id"]] = (min(start, s["start_ns"]), max(end, s["end_ns"]))
        for row in section["rows"]:
            track, bar, s = row["track"], row["bar"], spans[row["id"]]
            start, end = trace_of[s["trace_id"]]
            expected_left = track["left"] + track["width"] * (s["start_ns"] - start) / (end - start)
            # Off by at most the width a span too short to see is given, at the track's end.
            assert abs(bar["left"] - expected_left) <= MIN_BAR_PX + 0.5, (s["name"], bar, track)
            assert bar["width"] > 0 and bar["right"] <= track["right"] + 1
            if row["orphan"]:
                text, mark = row["mark"]
                assert text == f"orphaned: {row['orphan']}" and mark["width"] > 0
        plain = [row for row in section["rows"] if not row["orphan"]]
        for row in section["rows"]:
            if row["orphan"]:
                assert row["edge"] not in {other["edge"] for other in plain}
                assert row["shade"] not in {other["shade"] for other in plain}
    assert sum(bool(row["orphan"]) for row in broken["rows"]) == 2
    assert not any(row["orphan"] for row in fixed["rows"])


def test_chromium_photographs_the_whole_page(real_page, tmp_path):
    height = page_height(real_page, WIDTH)
    assert 300 < height < 3000
    png = tmp_path / "waterfalls.png"
    assert screenshot(real_page, png, WIDTH, height) == (WIDTH * SCALE, height * SCALE)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert png_size(png) == (WIDTH * SCALE, height * SCALE)
    # A blank page compresses to a few kilobytes; two waterfalls with their text do not.
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
