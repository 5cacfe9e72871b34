from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from aimos import api as system_api
from aimos import health
from core import errors

urlpatterns = [
    path("health", health.health, name="health"),
    path("metrics", system_api.metrics, name="metrics"),
    # Webhooks moved from the executions app to notifications: their old admin addresses.
    re_path(
        r"^admin/executions/(?P<rest>webhook(?:delivery)?/.*)$",
        RedirectView.as_view(
            url="/admin/notifications/%(rest)s", permanent=True, query_string=True
        ),
    ),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include(("aimos.api_urls", "api"), namespace="v1")),
    path("", include("aimos.compat")),
    re_path(r"^api(/.*)?$", errors.api_not_found),
    # The dashboard, last: nothing of it may shadow an API or admin path.
    path("", include("aimos.pages")),
]

handler404 = "core.errors.page_not_found"
handler500 = "core.errors.server_error"
