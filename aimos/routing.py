"""WebSocket routes; each app adds its consumers here. Who may connect is decided around
them, in `aimos.asgi` (origin, credentials); an unknown path closes with 4404."""

from django.urls import re_path

from executions import consumers
from workspaces import consumers as sessions

websocket_urlpatterns: list = [
    re_path(r"^ws/executions/(?P<execution_id>[^/]+)/?$", consumers.ExecutionConsumer.as_asgi()),
    re_path(r"^ws/events/?$", consumers.FeedConsumer.as_asgi()),
    re_path(r"^ws/sessions/(?P<session_id>[^/]+)/?$", sessions.SessionConsumer.as_asgi()),
    # The reference platforms' feed (DESIGN §7, compatibility).
    re_path(r"^api/(?:v1/)?ws/(?P<user_id>[^/]+)/?$", consumers.CompatFeedConsumer.as_asgi()),
    # Crogia's session socket (`WS /ws/{session_id}`): after the routes above, so `ws/events`
    # stays the feed; an id, else the path is unknown (4404).
    re_path(
        r"^ws/(?P<session_id>[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12})/?$",
        sessions.SessionConsumer.as_asgi(),
    ),
]
