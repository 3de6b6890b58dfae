"""Traces as waterfalls on one self-contained HTML page, variants side by side.

    from tracetools.waterfall import write
    write("traces.html", [("broken", "what it does", spans), ("fixed", "...", spans)])

One file, no script, no fonts or styles fetched from anywhere: open it from disk, mail it,
keep it next to a bug report. Each span is a row (name indented under its parent, service,
start and duration) with a bar placed by its start and scaled by its duration on its trace's
own time line, as tracetools.view prints it; the spans the doctor finds orphaned are marked.

For machines: each variant is a <section class="variant" data-variant=NAME data-traces=N
data-orphans=N data-spans=N>, each trace a <div class="trace" data-trace-id=ID>, each span a
<div class="span" data-span-id=ID data-service=NAME>, with class "orphan" and
data-orphan=CAUSE when the doctor finds it orphaned.
"""

from html import escape

from tracetools.view import bar, describe, marks, ms, timeline

TITLE = "Celery traces, side by side"
# Bars are placed in percent of the trace's time line: this many steps across it.
RESOLUTION = 1000
PALETTE = ("#3867d6", "#20a35a", "#8e44c9", "#d9820f", "#1497a8", "#c2417f", "#6f7f1c",
           "#5b6472")
# A span too short to see still gets a bar this wide, inside its track.
MIN_BAR_PX = 3
MONO = 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace'
COLUMNS = "minmax(0, 1.45fr) minmax(0, 1fr) 5.4em"

STYLE = f"""
* {{ box-sizing: border-box; }}
body {{ margin: 0; padding: 18px 22px; color: #1d2330; background: #fff;
  font: 14px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }}
h1 {{ font-size: 19px; margin: 0 0 6px; }}
code {{ font-family: {MONO}; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 4px 18px; align-items: center;
  margin: 0 0 14px; color: #4a5263; font-size: 13px; }}
.swatch {{ display: inline-block; width: 20px; height: 10px; border-radius: 2px;
  vertical-align: -1px; margin-right: 5px; }}
.swatch.queued {{ background: none; border-top: 2px dashed #8a93a3; height: 2px;
  vertical-align: 3px; }}
.variants {{ display: grid; gap: 18px; align-items: start;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 35em), 1fr)); }}
.variant {{ border: 1px solid #d5dae3; border-radius: 8px; padding: 10px 12px 4px;
  min-width: 0; }}
.variant header {{ display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; }}
.variant h2 {{ font-size: 18px; margin: 0; }}
.story {{ margin: 3px 0 8px; color: #4a5263; font-size: 13px; }}
.verdict {{ padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; }}
.verdict.connected {{ background: #e2f4e7; color: #17692f; }}
.verdict.broken {{ background: #fde5e5; color: #a31d1d; }}
.trace {{ margin: 0 0 10px; }}
.trace-head, .span {{ display: grid; grid-template-columns: {COLUMNS}; gap: 10px;
  align-items: center; padding: 3px 6px 3px 0; border-left: 4px solid transparent; }}
.trace-head {{ border-bottom: 1px solid #d5dae3; font-size: 12.5px; color: #4a5263;
  align-items: end; }}
.trace-head b {{ color: #1d2330; }}
.trace-head code {{ font-size: 12px; }}
.trace-head .after {{ display: block; }}
.trace-head .when b {{ font: 600 11.5px system-ui, sans-serif; }}
.trace-head .when span {{ font: 11.5px system-ui, sans-serif; }}
.axis {{ display: flex; justify-content: space-between; font: 11.5px {MONO};
  color: #6b7385; }}
.span + .span {{ border-top: 1px solid #eef0f4; }}
.who {{ min-width: 0; }}
.name {{ font: 12px/1.3 {MONO}; overflow-wrap: anywhere; }}
.meta {{ font-size: 11.5px; color: #596174; margin-top: 1px; }}
.meta i {{ display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  margin-right: 4px; }}
.track {{ position: relative; height: 16px;
  background: linear-gradient(to right, #e6e9ef 1px, transparent 1px) 0 0 / 25% 100%; }}
.bar {{ position: absolute; top: 2px; bottom: 2px; min-width: {MIN_BAR_PX}px;
  border-radius: 2px; }}
.track .queued {{ position: absolute; top: 7px; height: 0; border-top: 2px dashed #8a93a3; }}
.when {{ font: 12px/1.3 {MONO}; text-align: right; white-space: nowrap; }}
.when b {{ font-weight: 600; }}
.when span {{ display: block; color: #6b7385; font-size: 11.5px; }}
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
    """The HTML page: VARIANTS [(name, caption, spans)] side by side, in that order.
    WORKER_SERVICES as for tracetools.view.verdict()."""
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
    sections = "\n".join(_variant(name, caption, drawing, services)
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
<span>bars: start and duration on each trace's own time line</span>
</div>
<main class="variants">
{sections}
</main>
</body>
</html>
"""


def write(path, variants, title=TITLE, worker_services=()):
    """Write page(VARIANTS) to PATH."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(page(variants, title, worker_services))


def _variant(name, caption, drawing, services):
    counts = drawing.counts
    state = "broken" if counts["orphans"] else "connected"
    traces = []
    first_start = drawing.traces[0].start_ns if drawing.traces else 0
    for number, trace in enumerate(drawing.traces, 1):
        after = (f'<span class="after">starts {ms(trace.start_ns - first_start)} after '
                 "trace 1</span>" if number > 1 else "")
        rows = "\n".join(_row(row, trace, services) for row in trace.rows)
        traces.append(
            f'<div class="trace" data-trace-id="{_text(trace.trace_id)}">\n'
            f'<div class="trace-head"><div><b>trace {number}</b> '
            f'<code title="{_text(trace.trace_id)}">{_text(trace.trace_id[:8])}…</code>'
            f"{after}</div>"
            f'<div class="axis"><span>0</span><span>{ms(trace.end_ns - trace.start_ns)}</span>'
            '</div><div class="when"><b>duration</b><span>start</span></div></div>\n'
            f"{rows}\n</div>"
        )
    body = "\n".join(traces) or '<p class="story">No spans.</p>'
    return f"""<section class="variant" data-variant="{_text(name)}" \
data-traces="{counts['traces']}" data-orphans="{counts['orphans']}" \
data-spans="{counts['spans']}">
<header><h2><code>{_text(name)}</code></h2>\
<span class="verdict {state}">{_text(describe(counts))}</span></header>
<p class="story">{_text(caption)}</p>
{body}
</section>"""


def _row(row, trace, services):
    span = row.span
    service = span["service"] or "?"
    colour = services[service]
    waited, first, last = bar(row, trace, RESOLUTION)
    wait = (
        f'<div class="queued" title="queued {ms(row.waited_ns)} after its parent ended" '
        f'style="left:{_percent(waited)};width:{_percent(first - waited)}"></div>'
        if first > waited else ""
    )
    badges = "".join(
        f'<span class="mark{_badge_class(mark)}">{_text(mark)}</span>' for mark in marks(row)
    )
    kind, orphan = ("span orphan", f' data-orphan="{_text(row.orphan)}"') if row.orphan \
        else ("span", "")
    tip = f"{span['name']} ({service}): starts +{ms(row.offset_ns)}, {ms(row.duration_ns)}"
    indent = f"padding-left:{(row.depth - 1) * 9 + 6}px"
    return (
        f'<div class="{kind}" data-span-id="{_text(span["span_id"])}"'
        f' data-service="{_text(service)}"{orphan}>'
        f'<div class="who" style="{indent}"><div class="name">{_text(span["name"])}</div>'
        f'<div class="meta"><i style="background:{colour}"></i>{_text(service)}{badges}</div>'
        "</div>"
        f'<div class="track">{wait}<div class="bar" title="{_text(tip)}" '
        f'style="left:min({_percent(first)}, calc(100% - {MIN_BAR_PX}px));'
        f'width:{_percent(last - first)};background:{colour}">'
        "</div></div>"
        f'<div class="when"><b>{ms(row.duration_ns)}</b><span>+{ms(row.offset_ns)}</span></div>'
        "</div>"
    )


def _percent(cells):
    return f"{cells * 100 / RESOLUTION:.1f}%"


def _badge_class(mark):
    if mark == "ERROR":
        return " error"
    return "" if mark.startswith("orphaned") else " note"


def _text(value):
    return escape(str(value), quote=True)
