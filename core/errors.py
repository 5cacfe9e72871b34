"""One shape for every API error: `{"detail", "code", "errors": [{"field", "message"}]}`.

Domain exceptions raised by services carry their status and code; the DRF exception
handler maps them (and DRF's own exceptions) to that shape, and `ApiErrorMiddleware`
does the same for anything that escapes a view under `/api/`, so no HTML error page is
ever served there.
"""

import logging
import uuid
from collections.abc import Iterable

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers, status

from core.transient import TRANSIENT_ERRORS

logger = logging.getLogger("core.errors")


class ServiceError(Exception):
    """A use case refused: the message is shown to the client as `detail`."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None, errors: list | None = None):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.errors = errors or []

    @classmethod
    def invalid(
        cls,
        field: str | None,
        message: str,
        *,
        detail: str = "Invalid request data",
        code: str = "validation_error",
        more: Iterable[tuple[str | None, str]] = (),
    ) -> "ServiceError":
        """A request refused for its data: `message` about `field` (and `more` such pairs),
        in the `[{"field", "message"}]` shape every error body has."""
        pairs = [(field, message), *more]
        return cls(detail, code=code, errors=[{"field": f, "message": m} for f, m in pairs])


class Conflict(ServiceError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class NotFound(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Unauthenticated(ServiceError):
    """Credentials were presented and are wrong (bad password, invalid token): a 401."""

    status_code = status.HTTP_401_UNAUTHORIZED
    code = "authentication_failed"


# HTTP requires a challenge on every 401; clients of the API authenticate with Bearer tokens.
WWW_AUTHENTICATE = 'Bearer realm="api"'


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """The body of every error response, for the OpenAPI schema."""

    detail = serializers.CharField()
    code = serializers.CharField()
    errors = FieldErrorSerializer(many=True)


def _field_errors(data, prefix: str = "") -> list[dict]:
    """Flatten DRF's nested validation errors into `[{"field", "message"}]`."""
    errors = []
    if isinstance(data, dict):
        for key, value in data.items():
            field = key if key != "non_field_errors" else ""
            name = f"{prefix}.{field}" if prefix and field else (field or prefix)
            errors.extend(_field_errors(value, name))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            if isinstance(value, (dict, list)):
                errors.extend(_field_errors(value, f"{prefix}[{index}]" if prefix else str(index)))
            else:
                errors.extend(_field_errors(value, prefix))
    else:
        errors.append({"field": prefix or None, "message": str(data)})
    return errors


def error_body(detail: str, code: str, errors: list | None = None, **extra) -> dict:
    return {"detail": detail, "code": code, "errors": errors or [], **extra}


def api_exception_handler(exc, context):
    # Imported here: authentication classes import this module while rest_framework.views
    # is still loading its settings.
    from rest_framework.views import exception_handler

    if isinstance(exc, ServiceError):
        response = _response(error_body(exc.detail, exc.code, exc.errors), exc.status_code)
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            response["WWW-Authenticate"] = WWW_AUTHENTICATE
        return response
    if isinstance(exc, RequestDataTooBig):
        return _response(_too_big_body(), status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _field_errors(exc.detail)
        detail = "Invalid request data"
        if len(errors) == 1 and not errors[0]["field"]:
            detail = errors[0]["message"]
        response.data = error_body(detail, "validation_error", errors)
    else:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        extra = {}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            # Throttled.wait is already rounded up: the body says what Retry-After says.
            extra["retry_after"] = int(exc.wait)
        response.data = error_body(str(detail), code, **extra)
    return response


def _too_big_body() -> dict:
    return error_body(
        "The request body is larger than this server accepts; send files as multipart uploads",
        "too_large",
    )


def _response(body: dict, status_code: int):
    from rest_framework.response import Response

    return Response(body, status=status_code)


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/api"


@csrf_exempt
def api_not_found(request, *args, **kwargs):
    """Unknown route under /api/: JSON 404 whatever DEBUG says, whatever the method (it
    changes nothing, so a POST without a CSRF token gets the same 404 as a GET)."""
    return JsonResponse(error_body("Not found.", "not_found"), status=404)


def csrf_failure(request, reason=""):
    """`CSRF_FAILURE_VIEW`: a JSON 403 under /api/, Django's page elsewhere."""
    if is_api_path(request.path):
        body = error_body(f"CSRF check failed: {reason}", "csrf_failed")
        return JsonResponse(body, status=403)
    from django.views.csrf import csrf_failure as html_csrf_failure

    return html_csrf_failure(request, reason=reason)


def page_not_found(request, exception=None):
    if is_api_path(request.path):
        return api_not_found(request)
    from django.views.defaults import page_not_found as html_not_found

    return html_not_found(request, exception)


def server_error(request):
    if is_api_path(request.path):
        return JsonResponse(error_body("Internal server error", "server_error"), status=500)
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)


class ApiErrorMiddleware:
    """An exception escaping an API view becomes a JSON 500 with an id to find it in the logs
    (a JSON 503 when the database or Redis was briefly unreachable)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not is_api_path(request.path):
            return None
        if isinstance(exception, TRANSIENT_ERRORS):
            # The database or Redis went away for a moment: the client may try again.
            logger.warning("%s %s: %s", request.method, request.path, exception)
            body = error_body("The service is briefly unavailable; try again", "unavailable")
            response = JsonResponse(body, status=503)
            response["Retry-After"] = "1"
            return response
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse(_too_big_body(), status=413)
        error_id = str(uuid.uuid4())
        logger.exception("Unhandled error %s on %s %s", error_id, request.method, request.path)
        body = error_body("Internal server error", "server_error", error_id=error_id)
        return JsonResponse(body, status=500)


def error_responses(*codes: int) -> dict:
    """OpenAPI responses for the error statuses an endpoint can answer with."""
    from drf_spectacular.utils import OpenApiResponse

    return {code: OpenApiResponse(ErrorSerializer) for code in codes}
