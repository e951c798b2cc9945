"""Websocket routes (Channels). The Socket.IO endpoint is mounted in ``flowsite.asgi``."""

from django.urls import re_path

from flows.consumers import FlowEventsConsumer, NotFoundConsumer

websocket_urlpatterns = [
    re_path(r"^ws/flows/?$", FlowEventsConsumer.as_asgi()),
    re_path(r"^ws/flows/(?P<flow_id>[^/]+)/?$", FlowEventsConsumer.as_asgi()),
    re_path(r"", NotFoundConsumer.as_asgi()),
]
