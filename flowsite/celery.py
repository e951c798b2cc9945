"""The Celery application. Workers start with ``celery -A flowsite worker -Q <queues>``."""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowsite.settings")
# The embedded mode's atomic on-disk broker (flowsite/broker.py), as ``flowsitefs://``.
TRANSPORT_ALIASES.setdefault("flowsitefs", "flowsite.broker:Transport")

app = Celery("flowsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
