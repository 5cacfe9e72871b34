"""OpenAPI schema hooks."""


def only_canonical_paths(endpoints):
    """Keep `/api/v1/` in the schema; the compatibility aliases stay out of it."""
    from aimos.compat import ALIAS_CALLBACKS

    return [
        (path, regex, method, callback)
        for path, regex, method, callback in endpoints
        if path.startswith("/api/v1/") and callback not in ALIAS_CALLBACKS
    ]
