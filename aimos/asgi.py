"""ASGI entry point: HTTP through Django, WebSocket through Channels.

A WebSocket passes the origin check (a foreign `Origin` closes with 4403), then gets its
user from the session cookie, an API key or a JWT (`accounts.websocket`), then reaches its
consumer (`aimos.routing`); a path no consumer serves closes with 4404.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aimos.settings")
# This process serves requests: its database connections are pooled (aimos/settings.py).
os.environ["AIMOS_PROCESS"] = "web"
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from accounts.websocket import (  # noqa: E402
    CLOSE_NOT_FOUND,
    AllowedOriginValidator,
    Refusal,
    WebsocketAuthStack,
)
from aimos.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedOriginValidator(
            WebsocketAuthStack(
                URLRouter(
                    [*websocket_urlpatterns, re_path(r"", Refusal.as_asgi(code=CLOSE_NOT_FOUND))]
                )
            )
        ),
    }
)
