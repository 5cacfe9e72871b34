"""Lists are plain JSON arrays; paging by `limit` with `skip` or `offset`.

The total goes in `X-Total-Count` and the neighbouring pages in `Link`, so clients of
the reference platforms (which expect arrays) work unchanged.
"""

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

# The largest skip, offset or limit taken: beyond it a database's OFFSET/LIMIT overflows,
# and no list is that long.
MAX_VALUE = 2**31 - 1


def _non_negative(request, name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValidationError({name: "Must be an integer."}) from None
    if number < 0:
        raise ValidationError({name: "Must not be negative."})
    if number > MAX_VALUE:
        raise ValidationError({name: f"Must be at most {MAX_VALUE}."})
    return number


class LimitSkipPagination(BasePagination):
    default_limit = 100
    max_limit = 1000

    def paginate_queryset(self, queryset, request, view=None):
        limit = _non_negative(request, "limit", self.default_limit)
        self.limit = max(1, min(limit, self.max_limit))
        skip = _non_negative(request, "skip", None)
        self.offset = skip if skip is not None else _non_negative(request, "offset", 0)
        self.count = queryset.count() if hasattr(queryset, "count") else len(queryset)
        self.request = request
        return list(queryset[self.offset : self.offset + self.limit])

    def _links(self) -> str:
        url = remove_query_param(self.request.build_absolute_uri(), "skip")
        url = replace_query_param(url, "limit", self.limit)
        links = []
        if self.offset + self.limit < self.count:
            following = replace_query_param(url, "offset", self.offset + self.limit)
            links.append(f'<{following}>; rel="next"')
        if self.offset > 0:
            previous = max(0, self.offset - self.limit)
            links.append(f'<{replace_query_param(url, "offset", previous)}>; rel="prev"')
        return ", ".join(links)

    def get_paginated_response(self, data):
        headers = {"X-Total-Count": str(self.count)}
        links = self._links()
        if links:
            headers["Link"] = links
        return Response(data, headers=headers)

    def get_paginated_response_schema(self, schema):
        return {"type": "array", "items": schema.get("items", schema)}

    def get_schema_operation_parameters(self, view):
        def parameter(name, description):
            return {
                "name": name,
                "required": False,
                "in": "query",
                "description": description,
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VALUE},
            }

        return [
            parameter("limit", f"Number of items to return (at most {self.max_limit})."),
            parameter("skip", "Number of items to skip."),
            parameter("offset", "Same as skip."),
        ]
