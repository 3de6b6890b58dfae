"""The matrix's producer with Sentry active: `python -m tests.apps.sentry_publish SCENARIO...`.

Sentry writes its own trace headers, a nested `headers` dict among them, only for messages
published inside one of its transactions, as a web request would be.
"""

import sys

import sentry_sdk

import tests.apps.sentry_boot  # noqa: F401 (initialises Sentry)
from tests.apps.matrix_publish import main

with sentry_sdk.start_transaction(name="matrix scenarios"):
    main(sys.argv[1:])
