"""What the doctor must say of real traces, declared beside the matrix's expectations
(matrix_scenarios.py) and the traces' expected edges (traces.py): which consumer span is
orphaned, and the verdict it must be given."""

from typing import NamedTuple

from tests.support.matrix_scenarios import CALL_SITE, LOST
from tests.support.traces import EMAIL_RUN, RUN

NOT_EXTRACTED = "not-extracted"
REPUBLISHED = "republished-without-context"
NOT_INJECTED = "not-injected"


class Verdict(NamedTuple):
    """CAUSE, proven when the consumer span records what its message carried
    (celery.trace_context); when it does not, the doctor may only name CANDIDATES. No
    CANDIDATES: the span proves CAUSE either way (a parent task id, for a republished
    message)."""

    cause: str
    candidates: tuple = ()


def judged(verdict, span):
    """(cause, candidates): what the doctor must say of SPAN, declared VERDICT."""
    if verdict.candidates and "celery.trace_context" not in span["attributes"]:
        return "undetermined", list(verdict.candidates)
    return verdict.cause, [verdict.cause]


# Nothing injected and no producer span: the data cannot tell a publisher that sent no context
# from a publish inside a task, unless the consumer span says what the message carried.
UNTRACED_PUBLISHER = Verdict(NOT_INJECTED, (NOT_INJECTED, REPUBLISHED))

# One order, web app to email worker (tests/test_propagation.py), by consumer span name.
VARIANT_ORPHANS = {
    # Nothing injected by the web app; the email task was published from inside process_order.
    "broken": {RUN: UNTRACED_PUBLISHER, EMAIL_RUN: Verdict(REPUBLISHED)},
    # The web app injected around its own producer span (no message id: matched by task name
    # and time); the worker never extracted.
    "inject-only": {RUN: Verdict(NOT_EXTRACTED, (NOT_EXTRACTED, NOT_INJECTED)),
                    EMAIL_RUN: Verdict(REPUBLISHED)},
    # The web app's call site injects and the worker extracts; the .delay() inside the task
    # has no call-site headers.
    "call-site": {EMAIL_RUN: Verdict(REPUBLISHED)},
    "fixed": {},
}

# The publish paths the call-site variant loses (CALL_SITE), by the `work` span that each
# orphaned consumer span holds. Retries stay in the caller's trace: not orphaned.
CALL_SITE_ORPHANS = {
    "delay": {"work delay": UNTRACED_PUBLISHER},  # the publisher's own call, without headers
    "chain": {"work chain-2": Verdict(REPUBLISHED), "work chain-3": Verdict(REPUBLISHED)},
    "link": {"work link-callback": Verdict(REPUBLISHED)},
    "link_error_task": {"work link-errback-task": Verdict(REPUBLISHED)},
    "retry": {},
    "autoretry": {},
}
assert set(CALL_SITE_ORPHANS) == set(CALL_SITE), "declare the doctor's view of every loss"
assert {s for s, orphans in CALL_SITE_ORPHANS.items() if orphans} == {
    s for s, outcome in CALL_SITE.items() if outcome == LOST
}, "a lost path leaves orphans; a path kept in the trace leaves none"
