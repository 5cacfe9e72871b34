"""One log line and the HTTP metrics per request, under a request id.

The id comes from the client's `X-Request-ID` when it is sane (1-128 characters of
letters, digits and `._:+=/-`), else a new one; it is echoed in the response header
`X-Request-ID` and kept on `request.request_id`. The line, on the `aimos.request` logger:

    request method=GET route=/api/v1/agents/{pk} path=/api/v1/agents/3f… status=200
    duration_ms=4.1 user=7 request_id=9b2…

The route is the URL pattern that answered, not the path, so metrics stay bounded
(`unmatched` when none did, e.g. static files). For streaming responses (SSE) the duration
is the time to the response's start, not to the end of the stream.
"""

import functools
import json
import logging
import re
import time
import uuid

from django.utils.functional import SimpleLazyObject, empty

from aimos.prometheus import record_request

logger = logging.getLogger("aimos.request")

HEADER = "X-Request-ID"
SANE_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:+=/{}@%-]+")


@functools.lru_cache(maxsize=1024)
def route_template(route: str) -> str:
    """`api/v1/agents/(?P<pk>[^/.]+)(?:/)?$` → `/api/v1/agents/{pk}`; `<int:pk>` → `{pk}`."""
    out, i = [], 0
    while i < len(route):
        if route.startswith("(?P<", i):
            end = route.index(">", i)
            name = route[i + 4 : end]
            depth, j = 1, end + 1
            while depth and j < len(route):
                if route[j] == "\\":
                    j += 1
                elif route[j] == "(":
                    depth += 1
                elif route[j] == ")":
                    depth -= 1
                j += 1
            out.append("{" + name + "}")
            i = j
        elif route.startswith("(?:/)?", i):
            i += len("(?:/)?")
        else:
            out.append(route[i])
            i += 1
    template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", "".join(out))
    return "/" + template.replace("^", "").replace("$", "")


def _route(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None or match.route is None:
        return "unmatched"
    return route_template(match.route)


def _user_id(request):
    """The id of the user the request was served for, without loading a user nobody asked
    for (a lazy session user stays unevaluated)."""
    user = request.__dict__.get("user")
    if isinstance(user, SimpleLazyObject) and user.__dict__.get("_wrapped") is empty:
        return None
    return user.pk if user is not None and user.is_authenticated else None


def _value(value) -> str:
    text = "-" if value is None else str(value)
    return text if PLAIN_VALUE.fullmatch(text) else json.dumps(text)


class RequestLogMiddleware:
    """Request id in and out, one log line and the HTTP metrics for every request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get(HEADER, "")
        request.request_id = incoming if SANE_ID.fullmatch(incoming) else uuid.uuid4().hex
        started = time.perf_counter()
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        response[HEADER] = request.request_id
        route = _route(request)
        record_request(request.method, route, response.status_code, seconds)
        fields = {
            "method": request.method,
            "route": route,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
            "user": _user_id(request),
            "request_id": request.request_id,
        }
        level = logging.WARNING if response.status_code >= 500 else logging.INFO
        logger.log(
            level,
            "request %s",
            " ".join(f"{key}={_value(value)}" for key, value in fields.items()),
            extra={"request_id": request.request_id},
        )
        return response
