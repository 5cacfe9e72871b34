"""Request rates, and the X-RateLimit-* headers that tell clients where they stand.

Rates come from `settings.THROTTLE_RATES` at each request (not at import), so a changed
setting applies at once. Counters live in the shared cache (Redis), so every web process
counts together.

Each throttle that counted a request leaves its figures on the request;
`RateLimitHeadersMiddleware` writes those of the tightest one on the response, whatever
the response is (a 429 included).
"""

import math
from dataclasses import dataclass

from django.conf import settings
from rest_framework import throttling

__all__ = [
    "AnonRateThrottle",
    "AuthRateThrottle",
    "RateLimitHeadersMiddleware",
    "UserRateThrottle",
]


@dataclass(frozen=True)
class RateLimit:
    limit: int
    remaining: int
    reset: int  # epoch seconds when the oldest counted request leaves the window

    def is_tighter_than(self, other: "RateLimit") -> bool:
        return (self.remaining, self.limit) < (other.remaining, other.limit)


class RecordingRateThrottle(throttling.SimpleRateThrottle):
    """A SimpleRateThrottle whose rate is read per request and whose state is recorded."""

    def __init__(self):
        # SimpleRateThrottle reads the rate here; ours is resolved in allow_request, where
        # the scope may depend on who asks.
        pass

    def get_rate(self):
        return settings.THROTTLE_RATES[self.scope]

    def allow_request(self, request, view):
        self.key = None  # stays None when the rate is None (unlimited) or the throttle skips
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        allowed = super().allow_request(request, view)
        if self.key is not None:
            self._record(request)
        return allowed

    def _record(self, request) -> None:
        oldest = self.history[-1] if self.history else self.now
        figures = RateLimit(
            limit=self.num_requests,
            remaining=max(0, self.num_requests - len(self.history)),
            reset=math.ceil(oldest + self.duration),
        )
        # Kept on the Django request, which the middleware sees (DRF wraps it).
        django_request = getattr(request, "_request", request)
        current = getattr(django_request, "rate_limit", None)
        if current is None or figures.is_tighter_than(current):
            django_request.rate_limit = figures


class UserRateThrottle(RecordingRateThrottle):
    """Per authenticated user: the `user` rate, or the `admin` rate for staff."""

    scope = "user"

    def allow_request(self, request, view):
        self.scope = "admin" if request.user and request.user.is_staff else "user"
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class AnonRateThrottle(RecordingRateThrottle):
    """Per client IP, for requests without credentials."""

    scope = "anon"

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AuthRateThrottle(RecordingRateThrottle):
    """Per client IP, on login and registration: slows password guessing and sign-up floods."""

    scope = "auth"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class RateLimitHeadersMiddleware:
    """Writes X-RateLimit-Limit/Remaining/Reset for requests a throttle counted."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        figures = getattr(request, "rate_limit", None)
        if figures is not None:
            response["X-RateLimit-Limit"] = str(figures.limit)
            response["X-RateLimit-Remaining"] = str(figures.remaining)
            response["X-RateLimit-Reset"] = str(figures.reset)
        return response
