"""Tools for the traces themselves: a receiver that stores spans (sink), the one way to read
them from any store (sources, giving the records span_record defines), a viewer (view) and a
doctor that says why a Celery span is orphaned (doctor)."""
