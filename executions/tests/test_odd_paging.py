"""Out-of-range paging numbers and dates are 400s naming the field, never server errors."""

import pytest

pytestmark = pytest.mark.django_db

HUGE = "28217154814432138756096"


def fields(response) -> set:
    return {error["field"] for error in response.json()["errors"]}


@pytest.mark.parametrize("path", ["/api/v1/agents", "/api/v1/executions", "/api/executions"])
@pytest.mark.parametrize("name", ["skip", "offset", "limit"])
def test_an_out_of_range_paging_number_is_a_400_naming_it(owner_api, path, name):
    response = owner_api.get(path, {name: HUGE})

    assert response.status_code == 400
    assert fields(response) == {name}


def test_the_largest_accepted_skip_is_an_empty_page(owner_api):
    response = owner_api.get("/api/v1/executions", {"skip": 2**31 - 1})

    assert response.status_code == 200
    assert response.json() == []


def test_a_huge_skip_with_an_old_date_is_a_400_not_a_500(owner_api):
    response = owner_api.get(
        "/api/v1/executions", {"skip": HUGE, "created_before": "1161-02-24T11:38:40Z"}
    )

    assert response.status_code == 400
    assert fields(response) == {"skip"}


def test_an_old_but_valid_date_filters_normally(owner_api):
    response = owner_api.get(
        "/api/v1/executions", {"skip": 5, "created_before": "1161-02-24T11:38:40Z"}
    )

    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize(
    "name, value",
    [
        ("created_after", "0001-01-01T00:00:00+05:00"),
        ("created_before", "9999-12-31T23:59:59-05:00"),
        ("created_before", "10000-01-01T00:00:00Z"),
        ("created_after", "1161-02-30T11:38:40Z"),
    ],
)
def test_an_out_of_range_date_is_a_400_naming_it(owner_api, name, value):
    response = owner_api.get("/api/v1/executions", {name: value})

    assert response.status_code == 400
    assert fields(response) == {name}
