"""Tools for the traces themselves: a receiver that stores spans (sink), a viewer (view) and
a doctor that says why a Celery span is orphaned (doctor)."""
