from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .tasks import process_order


@csrf_exempt
@require_POST
def create_order(request):
    order_id = 42  # Order.objects.create(...).id in a real app
    # A plain delay(): celery_signals injects the context in before_task_publish.
    process_order.delay(order_id)
    return JsonResponse({"order_id": order_id}, status=202)
