"""A remote-control command for the tests: what the worker's main process remembers.

Loaded into a worker with `--include tests.apps.worker_probe`; the test asks with
`app.control.broadcast("otel_probe", reply=True, destination=[node])`.
"""

from pathlib import Path

from celery.worker.control import control_command

import celery_signals


@control_command()
def otel_probe(state):
    # White-box on purpose: the bound on what celery_signals remembers is the point.
    status = Path("/proc/self/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    return {"remembered": len(celery_signals._received), "rss_kb": rss_kb}
