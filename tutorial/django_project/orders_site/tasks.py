from celery import shared_task
from opentelemetry import trace

tracer = trace.get_tracer(__name__)


@shared_task
def process_order(order_id):
    with tracer.start_as_current_span("charge_payment"):
        pass
    with tracer.start_as_current_span("send_confirmation"):
        pass
