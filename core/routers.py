"""URL helpers shared by every app's API routes.

Paths are canonical without a trailing slash (as the reference clients call them) and
accept one. Written `(?:/)?` rather than `/?` so the OpenAPI paths come out without it.
"""

from django.urls import re_path
from rest_framework.routers import SimpleRouter

OPTIONAL_SLASH = "(?:/)?"


class OptionalSlashRouter(SimpleRouter):
    def __init__(self):
        super().__init__()
        self.trailing_slash = OPTIONAL_SLASH


def route(path: str, view, name: str):
    """A route for `path` (a regex without anchors) with an optional trailing slash."""
    return re_path(rf"^{path}{OPTIONAL_SLASH}$", view, name=name)
