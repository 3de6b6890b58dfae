"""The propagation matrix, declared once: for each way a message gets published, the
edges a connected trace must have, as (publisher, span) pairs.

"scenario" is the span the publishing code runs in (`scenario <name>`); "work X" as a
publisher means the task run that holds the span `work X`. Each span must sit under its
publisher, in the publisher's trace.
"""

SCENARIOS = {
    "apply_async": [("scenario", "work apply_async")],
    "delay": [("scenario", "work delay")],
    "send_task": [("scenario", "work send_task")],
    "signature": [("scenario", "work signature")],
    "chain": [
        ("scenario", "work chain-1"),
        ("work chain-1", "work chain-2"),
        ("work chain-2", "work chain-3"),
    ],
    "group": [("scenario", "work group-1"), ("scenario", "work group-2")],
    "chord": [
        ("scenario", "work chord-1"),
        ("scenario", "work chord-2"),
        ("scenario", "work chord-body"),
    ],
    "link": [("scenario", "work link"), ("work link", "work link-callback")],
    "link_error": [("scenario", "work link-error"), ("work link-error", "work link-errback")],
    "link_error_task": [
        ("scenario", "work link-error-task"),
        ("work link-error-task", "work link-errback-task"),
    ],
    "countdown": [("scenario", "work countdown")],
    "eta": [("scenario", "work eta")],
    "nested": [("scenario", "work nested"), ("work nested", "work nested-child")],
    "retry": [("scenario", "work retry-1"), ("work retry-1", "work retry-2")],
    "autoretry": [("scenario", "work autoretry-1"), ("work autoretry-1", "work autoretry-2")],
    "revoked": [("scenario", "celery.revoked matrix.never_runs")],
}

CONNECTED = "connected"
# In the publisher's trace, but not under the code that published it.
SAME_TRACE = "same trace"
LOST = "lost"

# What the call-site variant gets wrong (everything else it connects). Celery republishes
# these messages itself, without the headers the caller gave; a retry keeps them, so the
# next attempt hangs under the original caller instead of under the attempt that retried.
CALL_SITE = {
    "delay": LOST,
    "chain": LOST,
    "link": LOST,
    "link_error_task": LOST,
    "retry": SAME_TRACE,
    "autoretry": SAME_TRACE,
}
SYMBOLS = {CONNECTED: "✓", SAME_TRACE: "~", LOST: "✗"}


def outcome(spans, scenario):
    """How well SCENARIO's spans kept to its declared edges."""
    by_id = {span["span_id"]: span for span in spans}
    by_name = {span["name"]: span for span in spans}
    root = by_name[f"scenario {scenario}"]
    result = CONNECTED
    for publisher_name, name in SCENARIOS[scenario]:
        span = by_name[name]
        if span["trace_id"] != root["trace_id"]:
            return LOST
        if publisher_name == "scenario":
            publisher = root
        else:  # the run span that holds the publisher's work span
            publisher = by_id[by_name[publisher_name]["parent_id"]]
        if not _descends(span, publisher, by_id):
            result = SAME_TRACE
    return result


def expected_names(scenario):
    return {name for _, name in SCENARIOS[scenario]} | {f"scenario {scenario}"}


def _descends(span, ancestor, by_id):
    while span is not None:
        if span["parent_id"] == ancestor["span_id"]:
            return True
        span = by_id.get(span["parent_id"])
    return False


def render_table(results):
    """Markdown for the README: {(variant, broker, pool): {scenario: outcome}}."""
    brokers = list(dict.fromkeys(broker for _, broker, _ in results))
    pools = list(dict.fromkeys(pool for variant, _, pool in results if variant == "fixed"))
    lines = [
        f"| publish path | {' | '.join(pools)} | call-site variant |",
        "|---" * (len(pools) + 2) + "|",
    ]
    for scenario in SCENARIOS:
        fixed = [
            "".join(SYMBOLS[results["fixed", broker, pool][scenario]] for broker in brokers)
            for pool in pools
        ]
        call_site = {results[v, b, p][scenario] for v, b, p in results if v == "call-site"}
        lines.append(f"| {scenario} | {' | '.join(fixed)} | {', '.join(sorted(call_site))} |")
    return "\n".join(lines) + "\n"
