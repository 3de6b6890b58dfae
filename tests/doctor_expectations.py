"""What the doctor must say of real traces, declared beside the matrix's expectations
(matrix_scenarios.py) and the traces' expected edges (traces.py): which consumer span is
orphaned, and the cause it must be given."""

from matrix_scenarios import CALL_SITE, LOST
from traces import EMAIL_RUN, RUN

NOT_EXTRACTED = "not-extracted"
REPUBLISHED = "republished-without-context"
NOT_INJECTED = "not-injected"

# One order, web app to email worker (tests/test_propagation.py), by consumer span name.
VARIANT_ORPHANS = {
    # Nothing injected by the web app; the email task was published from inside process_order.
    "broken": {RUN: NOT_INJECTED, EMAIL_RUN: REPUBLISHED},
    # The web app injected around its own producer span; the worker never extracted.
    "inject-only": {RUN: NOT_EXTRACTED, EMAIL_RUN: REPUBLISHED},
    # The web app's call site injects and the worker extracts; the .delay() inside the task
    # has no call-site headers.
    "call-site": {EMAIL_RUN: REPUBLISHED},
    "fixed": {},
}

# The publish paths the call-site variant loses (CALL_SITE), by the `work` span that each
# orphaned consumer span holds. Retries stay in the caller's trace: not orphaned.
CALL_SITE_ORPHANS = {
    "delay": {"work delay": NOT_INJECTED},  # the publisher's own call, without headers
    "chain": {"work chain-2": REPUBLISHED, "work chain-3": REPUBLISHED},
    "link": {"work link-callback": REPUBLISHED},
    "link_error_task": {"work link-errback-task": REPUBLISHED},
    "retry": {},
    "autoretry": {},
}
assert set(CALL_SITE_ORPHANS) == set(CALL_SITE), "declare the doctor's view of every loss"
assert {s for s, orphans in CALL_SITE_ORPHANS.items() if orphans} == {
    s for s, outcome in CALL_SITE.items() if outcome == LOST
}, "a lost path leaves orphans; a path kept in the trace leaves none"
