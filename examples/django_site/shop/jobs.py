"""The shop's background jobs (a sqqueue Tasks app configured from Django's settings)."""

from django.conf import settings

from sqqueue import Tasks

tasks = Tasks(settings.SQQUEUE_TASKS, store_result=True)


@tasks.task(retries=3)
def confirm_order(order_id: int) -> str:
    return f"order {order_id} confirmed"
