"""Traces as waterfalls on one self-contained HTML page, variants side by side.

    from tracetools.waterfall import write
    write("traces.html", [("broken", "what it does", spans), ("fixed", "...", spans)])

One file, no script, no fonts or styles fetched from anywhere: open it from disk, mail it,
keep it next to a bug report. The variants go two to a row, in the order given: the first
two share the top row. Each span is a row (name indented under its parent, service, start
and duration) with a bar placed by its start and scaled by its duration; the spans the
doctor finds orphaned are marked.

Every bar on the page is drawn on one time scale, so bars compare across traces and across
variants: 0 is when the variant's first span started, and a trace of its own (an orphan's)
sits where its spans' clock times put it, after the request that caused it.

For machines: the <main> carries data-scale-ns (the time the full width of a track stands
for); each variant is a <section class="variant" data-variant=NAME data-traces=N
data-orphans=N data-spans=N data-origin-ns=NS> (NS: the start of its first span, its 0),
each trace a <div class="trace" data-trace-id=ID>, each span a <div class="span"
data-span-id=ID data-service=NAME>, with class "orphan" and data-orphan=CAUSE when the
doctor finds it orphaned.
"""

from html import escape

from tracetools.view import describe, marks, ms, timeline

TITLE = "Celery traces, side by side"
PALETTE = ("#3867d6", "#20a35a", "#8e44c9", "#d9820f", "#1497a8", "#c2417f", "#6f7f1c",
           "#5b6472")
# A span too short to see still gets a bar this wide, inside its track.
MIN_BAR_PX = 3
# The time axis gets at most this many steps of a round length (1, 2 or 5 times a power of
# ten milliseconds): few enough that their labels fit a laptop's half-width track.
MAX_TICKS = 5
MONO = 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace'
# Span name, track, timings. The names get what a long Celery span name needs on a wide
# screen and no more, the track the rest. Every panel is as wide as the others (see
# .variants), so every track is too: one millisecond is as many pixels in every panel.
# Pixels, not em: the axis row has a smaller font than the spans' rows, and its track must
# stand exactly over theirs.
COLUMNS = "min(340px, 42%) minmax(0, 1fr) 74px"

STYLE = f"""
* {{ box-sizing: border-box; }}
body {{ margin: 0; padding: 14px 20px; color: #1d2330; background: #fff;
  font: 14px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }}
h1 {{ font-size: 19px; margin: 0 0 4px; }}
code {{ font-family: {MONO}; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 2px 18px; align-items: center;
  margin: 0 0 10px; color: #4a5263; font-size: 13px; }}
.swatch {{ display: inline-block; width: 20px; height: 10px; border-radius: 2px;
  vertical-align: -1px; margin-right: 5px; }}
.swatch.queued {{ background: none; border-top: 2px dashed #8a93a3; height: 2px;
  vertical-align: 3px; }}
/* Two equal columns at any width a laptop has: the first two variants (broken and fixed)
   share the top row, the comparison the page is for, and the others follow below. auto-fit
   would give a wide screen three columns and push the second of the pair down a row. */
.variants {{ display: grid; gap: 14px; align-items: start;
  grid-template-columns: repeat(2, minmax(0, 1fr)); }}
/* Narrower than about 1000 px, two panels would squeeze names and bars: one column. */
@media (max-width: 62em) {{ .variants {{ grid-template-columns: minmax(0, 1fr); }} }}
.variant {{ border: 1px solid #d5dae3; border-radius: 8px; padding: 8px 12px 6px;
  min-width: 0; }}
.variant:only-child {{ grid-column: 1 / -1; }}  /* one variant: nothing to share a row with */
.variant header {{ display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; }}
.variant h2 {{ font-size: 18px; margin: 0; }}
.story {{ margin: 2px 0 4px; color: #4a5263; font-size: 13px; }}
.verdict {{ padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; }}
.verdict.connected {{ background: #e2f4e7; color: #17692f; }}
.verdict.broken {{ background: #fde5e5; color: #a31d1d; }}
.scale, .span {{ display: grid; grid-template-columns: {COLUMNS}; gap: 10px;
  align-items: center; padding: 2px 6px 2px 0; border-left: 4px solid transparent; }}
.scale {{ align-items: end; font-size: 12px; color: #4a5263;
  border-bottom: 1px solid #d5dae3; }}
.trace-head {{ margin-top: 6px; padding: 1px 0; font-size: 12.5px; color: #4a5263;
  border-bottom: 1px solid #d5dae3; }}
.trace-head b {{ color: #1d2330; }}
.trace-head code {{ font-size: 12px; margin-right: 6px; }}
/* Each tick's label starts at its gridline: a tick's width apart, labels never collide,
   however narrow the track. The track's end is the next tick: it goes unlabelled. */
.axis {{ position: relative; height: 1.3em; font: 11.5px {MONO}; color: #6b7385; }}
.axis span {{ position: absolute; bottom: 0; padding-left: 3px; white-space: nowrap; }}
.span + .span {{ border-top: 1px solid #eef0f4; }}
.who {{ min-width: 0; }}
/* A name too long for its column breaks after a dot (see _row), else anywhere. */
.name {{ font: 11.5px/1.3 {MONO}; overflow-wrap: anywhere; }}
.meta {{ font-size: 11.5px; color: #596174; margin-top: 1px; }}
.meta i {{ display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  margin-right: 4px; }}
/* A gridline at every tick of the axis: --step is set once for the page, on <main>. */
.track {{ position: relative; height: 16px;
  background: linear-gradient(to right, #e6e9ef 1px, transparent 1px) 0 0 / var(--step) 100%; }}
.bar {{ position: absolute; top: 2px; bottom: 2px; min-width: {MIN_BAR_PX}px;
  border-radius: 2px; }}
.track .queued {{ position: absolute; top: 7px; height: 0; border-top: 2px dashed #8a93a3; }}
.when {{ font: 12px/1.3 {MONO}; text-align: right; white-space: nowrap; }}
.when b {{ font-weight: 600; }}
.when span {{ display: block; color: #6b7385; font-size: 11.5px; }}
.scale .when b {{ font: 600 11.5px system-ui, sans-serif; }}
.scale .when span {{ font: 11.5px system-ui, sans-serif; }}
.span.orphan {{ background: #fdeeee; border-left-color: #d32f2f; }}
.span.orphan .bar {{ box-shadow: 0 0 0 2px #fff, 0 0 0 4px #d32f2f; }}
.mark {{ display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 3px;
  background: #d32f2f; color: #fff; font: 600 11px/1.55 system-ui, sans-serif;
  white-space: nowrap; }}
.mark.error {{ background: #7a1f1f; }}
.mark.note {{ background: #7a8394; }}
.legend .mark {{ margin: 0 5px 0 0; }}
"""


def page(variants, title=TITLE, worker_services=()):
    """The HTML page: VARIANTS [(name, caption, spans)] two to a row, in that order, every
    bar on one time scale. WORKER_SERVICES as for tracetools.view.verdict()."""
    drawn = [(name, caption, timeline(spans, worker_services))
             for name, caption, spans in variants]
    services = {}
    for _, _, drawing in drawn:
        for trace in drawing.traces:
            for row in trace.rows:
                services.setdefault(row.span["service"] or "?",
                                    PALETTE[len(services) % len(PALETTE)])
    legend = "".join(
        f'<span><span class="swatch" style="background:{colour}"></span>{_text(service)}</span>'
        for service, colour in services.items()
    )
    scale_ns, step_ns = _scale(max((_length(drawing) for _, _, drawing in drawn), default=0))
    sections = "\n".join(_variant(name, caption, drawing, services, scale_ns, step_ns)
                         for name, caption, drawing in drawn)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{_text(title)}</h1>
<div class="legend">{legend}
<span><span class="swatch queued"></span>queued: started after its parent ended</span>
<span><span class="mark">orphaned</span>cut off from the trace that caused it</span>
<span><b>One time scale</b> for every bar, {scale_ns // 1_000_000} ms across a track: 0 is each
variant's first span, and a trace of its own sits where its clock times put it</span>
</div>
<main class="variants" data-scale-ns="{scale_ns}" \
style="--step:{_percent(step_ns, scale_ns)}">
{sections}
</main>
</body>
</html>
"""


def write(path, variants, title=TITLE, worker_services=()):
    """Write page(VARIANTS) to PATH."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(page(variants, title, worker_services))


def _length(drawing):
    """From the start of DRAWING's first trace to the end of its last span."""
    if not drawing.traces:
        return 0
    return max(trace.end_ns for trace in drawing.traces) - drawing.traces[0].start_ns


def _scale(length_ns):
    """(full width, tick step) in nanoseconds: round steps, at most MAX_TICKS of them, that
    reach LENGTH_NS."""
    step = 1_000_000  # 1 ms: the page's precision is a tenth of one, its shortest axis 1 ms
    while True:
        for factor in (1, 2, 5):
            if step * factor * MAX_TICKS >= length_ns:
                steps = max(1, -(-length_ns // (step * factor)))
                return steps * step * factor, step * factor
        step *= 10


def _variant(name, caption, drawing, services, scale_ns, step_ns):
    counts = drawing.counts
    state = "broken" if counts["orphans"] else "connected"
    origin = drawing.traces[0].start_ns if drawing.traces else 0
    traces = []
    for number, trace in enumerate(drawing.traces, 1):
        after = f"starts {ms(trace.start_ns - origin)} after trace 1" if number > 1 else ""
        rows = "\n".join(_row(row, trace.start_ns - origin, services, scale_ns)
                         for row in trace.rows)
        traces.append(
            f'<div class="trace" data-trace-id="{_text(trace.trace_id)}">\n'
            f'<div class="trace-head"><b>trace {number}</b> '
            f'<code title="{_text(trace.trace_id)}">{_text(trace.trace_id[:8])}…</code>'
            f"{after}</div>\n{rows}\n</div>"
        )
    if traces:
        first = drawing.traces[0].rows[0].span["name"]
        ticks = "".join(f'<span style="left:{_percent(at, scale_ns)}">{at // 1_000_000}'
                        "</span>"
                        for at in range(0, scale_ns, step_ns))
        body = (f'<div class="scale"><div>ms after <code>{_text(first)}</code> began</div>'
                f'<div class="axis">{ticks}</div>'
                '<div class="when"><b>duration</b><span>start</span></div></div>\n'
                + "\n".join(traces))
    else:
        body = '<p class="story">No spans.</p>'
    return f"""<section class="variant" data-variant="{_text(name)}" \
data-traces="{counts['traces']}" data-orphans="{counts['orphans']}" \
data-spans="{counts['spans']}" data-origin-ns="{origin}">
<header><h2><code>{_text(name)}</code></h2>\
<span class="verdict {state}">{_text(describe(counts))}</span></header>
<p class="story">{_text(caption)}</p>
{body}
</section>"""


def _row(row, trace_start, services, scale_ns):
    """ROW's line; TRACE_START: its trace's start, from the variant's 0."""
    span = row.span
    service = span["service"] or "?"
    colour = services[service]
    start = trace_start + row.offset_ns
    wait = (
        f'<div class="queued" title="queued {ms(row.waited_ns)} after its parent ended" '
        f'style="left:{_percent(start - row.waited_ns, scale_ns)};'
        f'width:{_percent(row.waited_ns, scale_ns)}"></div>'
        if row.waited_ns else ""
    )
    badges = "".join(
        f'<span class="mark{_badge_class(mark)}">{_text(mark)}</span>' for mark in marks(row)
    )
    kind, orphan = ("span orphan", f' data-orphan="{_text(row.orphan)}"') if row.orphan \
        else ("span", "")
    tip = f"{span['name']} ({service}): starts +{ms(start)}, {ms(row.duration_ns)}"
    indent = f"padding-left:{(row.depth - 1) * 8 + 6}px"
    # celery.run tasks.send_confirmation_email: "tasks." then the task, not "…emai" then "l".
    name = _text(span["name"]).replace(".", ".<wbr>")
    return (
        f'<div class="{kind}" data-span-id="{_text(span["span_id"])}"'
        f' data-service="{_text(service)}"{orphan}>'
        f'<div class="who" style="{indent}"><div class="name">{name}</div>'
        f'<div class="meta"><i style="background:{colour}"></i>{_text(service)}{badges}</div>'
        "</div>"
        f'<div class="track">{wait}<div class="bar" title="{_text(tip)}" '
        # A span too short to see is widened to MIN_BAR_PX: move it left to keep it inside.
        f'style="left:min({_percent(start, scale_ns)}, calc(100% - {MIN_BAR_PX}px));'
        f'width:{_percent(row.duration_ns, scale_ns)};background:{colour}">'
        "</div></div>"
        f'<div class="when"><b>{ms(row.duration_ns)}</b><span>+{ms(start)}</span></div>'
        "</div>"
    )


def _percent(nanoseconds, scale_ns):
    return f"{nanoseconds * 100 / scale_ns:.2f}%"


def _badge_class(mark):
    if mark == "ERROR":
        return " error"
    return "" if mark.startswith("orphaned") else " note"


def _text(value):
    return escape(str(value), quote=True)
