"""ASGI entry point (``uvicorn flowsite.asgi:application``).

``/socket.io/`` goes to the Socket.IO server for legacy frontends (flows/socketio.py);
everything else to Channels: HTTP to Django (behind ``RequestBodyGuard``: oversized and
anonymous bodies are refused before they are read), websockets to the consumers of
``flowsite.routing`` behind the origin check and the token/session authentication.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowsite.settings")

# Set up Django (apps, models) before importing anything that uses them.
django_application = get_asgi_application()

import socketio  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from accounts.websocket import TokenAuthMiddlewareStack  # noqa: E402
from flows.socketio import SOCKETIO_PATH, server as socketio_server  # noqa: E402
from flowsite.bodylimit import RequestBodyGuard  # noqa: E402
from flowsite.routing import websocket_urlpatterns  # noqa: E402

channels_application = ProtocolTypeRouter(
    {
        "http": RequestBodyGuard(django_application),
        "websocket": AllowedHostsOriginValidator(TokenAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

application = socketio.ASGIApp(socketio_server, other_asgi_app=channels_application, socketio_path=SOCKETIO_PATH)
