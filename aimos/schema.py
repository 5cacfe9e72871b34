"""OpenAPI schema hooks."""


def only_canonical_paths(endpoints):
    """Keep `/api/v1/` in the schema; the compatibility aliases stay out of it."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/api/v1/")]
