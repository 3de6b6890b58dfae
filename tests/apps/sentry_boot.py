"""Sentry's Celery integration, active in the process that imports this module.

Workers load it with `--include tests.apps.sentry_boot`: it runs in the main process before the
pool forks, as Sentry advises (celeryd_init). SENTRY_DSN points at a local server that
accepts everything and keeps nothing.
"""

import os

import sentry_sdk

sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0)
