"""WebSocket routes; each app adds its consumers here. Who may connect is decided around
them, in `aimos.asgi` (origin, credentials); an unknown path closes with 4404."""

from django.urls import re_path

from executions import consumers

websocket_urlpatterns: list = [
    re_path(r"^ws/executions/(?P<execution_id>[^/]+)/?$", consumers.ExecutionConsumer.as_asgi()),
    re_path(r"^ws/events/?$", consumers.FeedConsumer.as_asgi()),
    # The reference platforms' feed (DESIGN §7, compatibility).
    re_path(r"^api/(?:v1/)?ws/(?P<user_id>[^/]+)/?$", consumers.CompatFeedConsumer.as_asgi()),
]
