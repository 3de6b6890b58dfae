"""Loaded into the orders worker by tests/test_worker_killed.py (--include tests.apps.kill_hook):
the first attempt at each order stops between charging it and confirming it, says which
process it is in, and waits there to be killed.

Later attempts (the redelivered message) go through. KILL_TEST_FOLDER holds one file per
order, named after it, with the pid of the process that waits.
"""

import os
import time
from pathlib import Path

import orders_db
from tracing import flush_tracing

FOLDER = Path(os.environ["KILL_TEST_FOLDER"])
# Killed long before: this only ends a wait that nobody ended.
WAIT_SECONDS = 300

_advance = orders_db.advance


def advance(connection, order_id, current, new):
    if (current, new) == ("charged", "confirmed"):
        claim = FOLDER / f"{order_id}.claimed"
        try:
            claim.touch(exist_ok=False)
        except FileExistsError:
            pass  # a later attempt: carry on
        else:
            # What this attempt ended so far (its charge_payment span) is exported, as it
            # would be OTEL_BSP_SCHEDULE_DELAY after it ended: the test knows what to expect.
            flush_tracing()
            waiting = FOLDER / f"{order_id}.partial"
            waiting.write_text(str(os.getpid()))
            waiting.rename(FOLDER / str(order_id))
            time.sleep(WAIT_SECONDS)
            raise RuntimeError("the first attempt was not killed")
    return _advance(connection, order_id, current, new)


orders_db.advance = advance
