"""Paths of the reference platforms, served as thin aliases of the canonical API.

Nothing here is in the OpenAPI schema (see `aimos.schema.only_canonical_paths`).
"""

from django.urls import include, path

urlpatterns = [
    # The whole canonical API without `v1`.
    path("api/", include(("aimos.api_urls", "api"), namespace="compat")),
]
