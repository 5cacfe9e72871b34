"""What the dashboard's page views share: the services' refusals turned into what a page shows.

Pages change things only through the services the API uses. A service's NotFound (another
user's object included) is a 404 page; any other refusal is a message on the page it came
from. A form submitted by the dashboard's JavaScript (`Accept: application/json`) gets the
same outcome as JSON instead of a redirect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect

from core.errors import NotFound, ServiceError

T = TypeVar("T")


def found(access: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call an `access_*` service; what the user may not see is a 404 page."""
    try:
        return access(*args, **kwargs)
    except NotFound as exc:
        raise Http404(exc.detail) from None


def error_text(exc: ServiceError) -> str:
    """The refusal in one sentence: its detail, then the field messages that add to it."""
    extra = [
        item["message"]
        for item in exc.errors
        if item.get("message") and item["message"] != exc.detail
    ]
    return " ".join([exc.detail, *extra])


def add_to_form(form, exc: ServiceError) -> None:
    """Show a service's refusal on the form: each field error on its field when the form has
    it, the rest above the form."""
    for item in exc.errors:
        field = item.get("field")
        form.add_error(field if field in form.fields else None, item["message"])
    if not exc.errors:
        form.add_error(None, error_text(exc))


def wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def outcome(
    request: HttpRequest,
    to: str,
    *,
    ok: str | None = None,
    error: ServiceError | None = None,
    data: dict | None = None,
) -> HttpResponse:
    """Answer a state-changing form: JSON for the dashboard's scripts, else a message and a
    redirect to `to` (post/redirect/get, so a reload does not submit twice)."""
    if wants_json(request):
        if error is not None:
            body = {
                "detail": error_text(error),
                "code": error.code,
                "errors": error.errors,
                **(data or {}),
            }
            return JsonResponse(body, status=error.status_code)
        return JsonResponse({"detail": ok or "", **(data or {})})
    if error is not None:
        messages.error(request, error_text(error))
    elif ok:
        messages.success(request, ok)
    return redirect(to)


def parse_json(text: str, *, blank: Any = None) -> Any:
    """JSON typed into a form; `blank` when the field is empty. Raises ValueError with a
    message that says where the text is wrong."""
    if not text.strip():
        return blank
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
