"""A real load: orders from 32 concurrent clients against gunicorn (4 workers) → a prefork
orders worker → an email worker, on Redis, traced (`fixed`) and untraced in the same run.

Every order reaches its last status, none is lost and no task runs twice; every request's
trace is whole and connected. LOAD_ORDERS sets the size: 500 by default (15 to 25 s per
configuration on this 2-core machine, busy); the README reports an opt-in run too (see its
Reliability section), with the latencies and throughput that the default run only prints.
"""

import os

from tests.support.brokers import require
from tests.support.load import CONFIGS, WEB_WORKERS, measure, ran, run_twice, traces
from tests.support.traces import CONNECTED_EDGES, REQUEST, assert_edges
from tracetools.doctor import assert_no_orphans

DEFAULT_LOAD_ORDERS = 500
LOAD_ORDERS = int(os.environ.get("LOAD_ORDERS", DEFAULT_LOAD_ORDERS))
CLIENTS = 32
WORKER_SERVICES = ("orders-worker", "email-worker")
LOAD_ROW = (
    f"load held: gunicorn ({WEB_WORKERS} workers) → prefork orders worker → email worker, Redis"
)
LOAD_TIMINGS_ROW = f"load held, POST latency and throughput, {CLIENTS} clients"


def held(measured):
    """Every order emailed, none lost, no task received or run twice."""
    load = measured.load
    assert load.failures == []
    assert len(set(load.order_ids)) == LOAD_ORDERS
    assert load.statuses == {"emailed": LOAD_ORDERS}
    assert run_twice(measured) == []
    assert ran(measured, "tasks.process_order") == LOAD_ORDERS
    assert ran(measured, "tasks.send_confirmation_email") == LOAD_ORDERS


def test_a_load_of_orders_is_held_traced_and_untraced(tmp_path_factory, figures):
    require("redis")
    runs = {
        config: measure(config, LOAD_ORDERS, CLIENTS, lambda: tmp_path_factory.mktemp("load"))
        for config in ("untraced", "fixed")
    }
    for measured in runs.values():
        held(measured)
    assert runs["untraced"].spans == []
    spans = runs["fixed"].spans
    # One trace per order, each whole and connected: request → orders worker → email worker,
    # every span once.
    by_trace = traces(spans)
    assert len(by_trace) == LOAD_ORDERS
    for trace_spans in by_trace.values():
        assert len(trace_spans) == len(CONNECTED_EDGES) + 1
        assert_edges(trace_spans, CONNECTED_EDGES)
    assert sum(span["name"] == REQUEST for span in spans) == LOAD_ORDERS
    assert_no_orphans(spans, WORKER_SERVICES)
    figures[LOAD_ROW] = (
        f"{LOAD_ORDERS} orders from {CLIENTS} clients, traced and untraced: {LOAD_ORDERS} of "
        f"{LOAD_ORDERS} emailed in each, 0 lost, 0 run twice; {LOAD_ORDERS} whole traces, "
        "0 orphans"
    )
    untraced, fixed = runs["untraced"].load, runs["fixed"].load
    figures[LOAD_TIMINGS_ROW] = (
        f"{LOAD_ORDERS} orders: untraced {untraced.summary()}; fixed {fixed.summary()}"
    )
    for config, measured in runs.items():
        print(f"{config} ({CONFIGS[config][0]}): {measured.load.summary()}")
