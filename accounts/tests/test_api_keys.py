"""API keys: created and shown once, listed without the secret, revoked at once."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import ApiKey, hash_key
from accounts.tests.helpers import KEYS, ME, api_key

pytestmark = pytest.mark.django_db

KEY_FORMAT = re.compile(r"^aimos_(?P<prefix>[0-9a-f]{16})_(?P<secret>[0-9a-f]{64})$")


def test_create_returns_the_whole_key_once(owner_api):
    response = owner_api.post(KEYS, {"name": "ci"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "id",
        "name",
        "key",
        "key_prefix",
        "created_at",
        "expires_at",
        "last_used_at",
    }
    match = KEY_FORMAT.match(body["key"])
    assert match, body["key"]
    assert match["prefix"] == body["key_prefix"]
    assert body["name"] == "ci"
    assert body["expires_at"] is None


def test_the_new_key_authenticates_as_its_owner(api, owner, create_key):
    key = create_key(owner)["key"]

    response = api.get(ME, **api_key(key))

    assert response.status_code == 200
    assert response.json()["username"] == "owner"


def test_the_key_is_stored_only_as_prefix_and_sha256(owner, create_key):
    body = create_key(owner)

    row = ApiKey.objects.get(pk=body["id"])
    assert row.key_prefix == body["key_prefix"]
    assert row.hashed_key == hash_key(body["key"])
    assert row.hashed_key != body["key"]


def test_no_plaintext_key_is_stored_in_any_column_of_any_table(api, owner, create_key):
    body = create_key(owner)
    secret = KEY_FORMAT.match(body["key"])["secret"]
    assert api.get(ME, **api_key(body["key"])).status_code == 200
    assert api.get(KEYS, **api_key(body["key"])).status_code == 200

    def columns_containing(needle: str) -> list[str]:
        found = []
        with connection.cursor() as cursor:
            for table in connection.introspection.table_names(cursor):
                for column in connection.introspection.get_table_description(cursor, table):
                    table_q = connection.ops.quote_name(table)
                    column_q = connection.ops.quote_name(column.name)
                    cursor.execute(
                        f"SELECT 1 FROM {table_q} WHERE CAST({column_q} AS TEXT) LIKE %s LIMIT 1",
                        [f"%{needle}%"],
                    )
                    if cursor.fetchone():
                        found.append(f"{table}.{column.name}")
        return found

    # The scan does find what is stored: the hash, in exactly one place.
    assert columns_containing(hash_key(body["key"])) == ["accounts_apikey.hashed_key"]
    assert columns_containing(secret) == []
    assert columns_containing(body["key"]) == []


def test_list_shows_the_callers_keys_without_secrets(owner_api, owner, other, create_key):
    mine = create_key(owner, name="mine")
    create_key(other, name="theirs")

    response = owner_api.get(KEYS)

    assert response.status_code == 200
    assert response["X-Total-Count"] == "1"
    [listed] = response.json()
    assert listed["id"] == mine["id"]
    assert listed["key_prefix"] == mine["key_prefix"]
    assert "key" not in listed
    assert KEY_FORMAT.match(mine["key"])["secret"] not in response.content.decode()


def test_list_runs_a_fixed_number_of_queries(
    owner_api, owner, create_key, django_assert_max_num_queries
):
    for number in range(10):
        create_key(owner, name=f"key {number}")

    with django_assert_max_num_queries(2):
        response = owner_api.get(KEYS)

    assert len(response.json()) == 10


def test_list_pages_with_limit_and_offset(owner_api, owner, create_key):
    for number in range(3):
        create_key(owner, name=f"key {number}")

    response = owner_api.get(KEYS, {"limit": 2, "offset": 2})

    assert response["X-Total-Count"] == "3"
    assert len(response.json()) == 1


def test_delete_revokes_the_key_at_once(api, owner, owner_api, create_key):
    body = create_key(owner)
    assert api.get(ME, **api_key(body["key"])).status_code == 200

    response = owner_api.delete(f"{KEYS}/{body['id']}")

    assert response.status_code == 204
    refused = api.get(ME, **api_key(body["key"]))
    assert refused.status_code == 401
    assert refused.json()["detail"] == "Invalid API key"
    assert ApiKey.objects.get(pk=body["id"]).revoked_at is not None
    assert owner_api.get(KEYS).json() == []


def test_deleting_a_revoked_key_again_is_a_404(owner_api, owner, create_key):
    body = create_key(owner)
    owner_api.delete(f"{KEYS}/{body['id']}")

    assert owner_api.delete(f"{KEYS}/{body['id']}").status_code == 404


def test_an_outsider_neither_sees_nor_revokes_anothers_key(api, owner, other_api, create_key):
    body = create_key(owner)

    assert other_api.get(KEYS).json() == []
    response = other_api.delete(f"{KEYS}/{body['id']}")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert ApiKey.objects.get(pk=body["id"]).revoked_at is None
    assert api.get(ME, **api_key(body["key"])).status_code == 200


def test_an_admin_does_not_revoke_someone_elses_key_through_the_api(admin_api, owner, create_key):
    body = create_key(owner)

    assert admin_api.delete(f"{KEYS}/{body['id']}").status_code == 404


@pytest.mark.parametrize("key_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_deleting_an_unknown_key_is_a_404(owner_api, key_id):
    response = owner_api.delete(f"{KEYS}/{key_id}")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_key_with_an_expiry_works_until_then(api, owner, create_key):
    expires_at = timezone.now() + timedelta(days=1)
    body = create_key(owner, expires_at=expires_at.isoformat())

    assert parse_datetime(body["expires_at"]) == expires_at
    assert api.get(ME, **api_key(body["key"])).status_code == 200


def test_an_expired_key_is_refused(api, owner, create_key):
    body = create_key(owner, expires_at=(timezone.now() + timedelta(days=1)).isoformat())
    ApiKey.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = api.get(ME, **api_key(body["key"]))

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API key", "code": "invalid_api_key", "errors": []}
    assert response["WWW-Authenticate"]


def test_a_key_cannot_be_created_already_expired(owner_api):
    past = (timezone.now() - timedelta(minutes=1)).isoformat()

    response = owner_api.post(KEYS, {"name": "ci", "expires_at": past}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "expires_at", "message": "Must be in the future."}
    ]


def test_a_key_needs_a_name(owner_api):
    response = owner_api.post(KEYS, {}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "name"


@pytest.mark.parametrize(
    "make_wrong",
    [
        lambda key: key[:-1] + ("0" if key[-1] != "0" else "1"),  # right prefix, wrong secret
        lambda key: "aimos_0123456789abcdef_" + key.rsplit("_", 1)[1],  # unknown prefix
        lambda key: key.replace("aimos_", "other_"),
        lambda key: "garbage",
        lambda key: "",
    ],
)
def test_a_wrong_key_is_refused(api, owner, create_key, make_wrong):
    key = create_key(owner)["key"]

    response = api.get(ME, **api_key(make_wrong(key)))

    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid API key"


def test_a_key_of_a_deactivated_user_is_refused(api, owner, create_key):
    key = create_key(owner)["key"]
    owner.is_active = False
    owner.save()

    assert api.get(ME, **api_key(key)).status_code == 401


def test_last_used_is_written_at_most_once_a_minute(api, owner, create_key):
    body = create_key(owner)
    assert body["last_used_at"] is None
    api.get(ME, **api_key(body["key"]))
    first_use = ApiKey.objects.get(pk=body["id"]).last_used_at
    assert first_use is not None

    with CaptureQueriesContext(connection) as queries:
        assert api.get(ME, **api_key(body["key"])).status_code == 200

    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert writes == []
    assert ApiKey.objects.get(pk=body["id"]).last_used_at == first_use


def test_last_used_is_written_again_after_a_minute(api, owner, create_key):
    body = create_key(owner)
    long_ago = timezone.now() - timedelta(minutes=2)
    ApiKey.objects.filter(pk=body["id"]).update(last_used_at=long_ago)

    api.get(ME, **api_key(body["key"]))

    assert ApiKey.objects.get(pk=body["id"]).last_used_at > long_ago


def test_listing_needs_authentication(api):
    assert api.get(KEYS).status_code == 401


def test_key_paths_accept_a_trailing_slash(owner_api):
    created = owner_api.post(KEYS + "/", {"name": "ci"}, format="json")
    assert created.status_code == 201

    response = owner_api.delete(f"{KEYS}/{created.json()['id']}/")

    assert response.status_code == 204
