"""Sampling that keeps traces whole: OTEL_TRACES_SAMPLER=parentbased_traceidratio at 10 % in
the web app and both workers, under the load of tests/test_load.py.

With `fixed`, the web app decides once per request and every worker follows the decision that
arrives with the message: a kept request keeps its whole trace, a dropped one leaves nothing.
With `broken`, each process decides alone, for a trace of its own: the workers keep spans of
requests the web app dropped, and about 1 % of orders would keep both workers' spans.
"""

from test_load import CLIENTS, LOAD_ORDERS, WORKER_SERVICES, held

from tests.support.brokers import require
from tests.support.load import CONFIGS, measure, traces
from tests.support.traces import CONNECTED_EDGES, EMAIL_RUN, REQUEST, RUN, assert_edges
from tracetools.doctor import assert_no_orphans

SAMPLED_ROW = "sampled at 10 % (parentbased_traceidratio in web app and workers)"
SAMPLED_TIMINGS_ROW = "sampled at 10 %, throughput"
FIXED, BROKEN = "fixed, sampled 10 %", "broken, sampled 10 %"


def run(config, tmp_path_factory):
    measured = measure(config, LOAD_ORDERS, CLIENTS, lambda: tmp_path_factory.mktemp("load"))
    held(measured)  # sampled or not, every order is emailed, and no task runs twice
    return measured


def test_sampling_by_parent_keeps_every_kept_trace_whole(tmp_path_factory, figures):
    require("redis")
    fixed = run(FIXED, tmp_path_factory)
    by_trace = traces(fixed.spans)
    requests = [span for span in fixed.spans if span["name"] == REQUEST]
    assert 0 < len(requests) < LOAD_ORDERS
    # Every trace is a kept request's, and whole: no worker span without its request.
    assert len(by_trace) == len(requests)
    for trace_spans in by_trace.values():
        assert len(trace_spans) == len(CONNECTED_EDGES) + 1
        assert_edges(trace_spans, CONNECTED_EDGES)
    assert_no_orphans(fixed.spans, WORKER_SERVICES)

    broken = run(BROKEN, tmp_path_factory)
    kept = {name: [s for s in broken.spans if s["name"] == name] for name in (REQUEST, RUN,
                                                                             EMAIL_RUN)}
    request_traces = {span["trace_id"] for span in kept[REQUEST]}
    # Each worker decided alone, for a trace of its own: none of its spans is in a request's
    # trace, and it kept runs whose requests were dropped (about one in ten).
    assert kept[RUN] and kept[EMAIL_RUN]
    assert not {s["trace_id"] for s in kept[RUN] + kept[EMAIL_RUN]} & request_traces
    # Orders whose email run was kept along with the orders run (the email task's parent).
    orders_runs = {span["attributes"]["messaging.message.id"] for span in kept[RUN]}
    both = sum(s["attributes"].get("celery.parent_task_id") in orders_runs
               for s in kept[EMAIL_RUN])

    figures[SAMPLED_ROW] = (
        f"{LOAD_ORDERS} orders: with `fixed` every kept request's trace is whole (web → orders "
        "→ email), 0 worker spans without their request; with `broken` each process keeps "
        "spans of its own choosing, cut off from their requests"
    )
    unsampled = measure("fixed", LOAD_ORDERS, CLIENTS, lambda: tmp_path_factory.mktemp("load"))
    figures[SAMPLED_TIMINGS_ROW] = (
        f"{LOAD_ORDERS} orders: fixed sampled {fixed.load.orders_per_second:.0f} orders/s "
        f"({len(requests)} traces kept, all whole), fixed unsampled "
        f"{unsampled.load.orders_per_second:.0f} orders/s; broken sampled: "
        f"{len(kept[REQUEST])} requests, {len(kept[RUN])} orders runs and "
        f"{len(kept[EMAIL_RUN])} email runs kept, {both} orders with both workers' spans"
    )
    for config, measured in ((FIXED, fixed), (BROKEN, broken), ("fixed", unsampled)):
        print(f"{config} ({CONFIGS[config][0]}): {measured.load.summary()}")
    print(figures[SAMPLED_TIMINGS_ROW])
