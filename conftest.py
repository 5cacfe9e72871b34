"""Fixtures shared by every app's tests: three people, API clients, fresh throttle counters."""

import uuid

import pytest
from rest_framework.test import APIClient


@pytest.fixture(autouse=True)
def _fresh_cache(settings):
    """Each test counts its own throttles: a key prefix of its own in the real Redis cache."""
    caches = {name: dict(config) for name, config in settings.CACHES.items()}
    caches["default"]["KEY_PREFIX"] = f"aimos-test-{uuid.uuid4().hex}"
    settings.CACHES = caches


def _make_user(django_user_model, username: str, **extra):
    return django_user_model.objects.create_user(
        username=username,
        email=f"{username}@example.com",
        password="correct-horse-battery",
        **extra,
    )


@pytest.fixture
def owner(db, django_user_model):
    return _make_user(django_user_model, "owner", full_name="Olive Owner")


@pytest.fixture
def other(db, django_user_model):
    return _make_user(django_user_model, "other", full_name="Otto Outsider")


@pytest.fixture
def admin(db, django_user_model):
    return _make_user(django_user_model, "admin", is_staff=True, is_superuser=True)


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def owner_api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def other_api(other):
    client = APIClient()
    client.force_authenticate(other)
    return client


@pytest.fixture
def admin_api(admin):
    client = APIClient()
    client.force_authenticate(admin)
    return client


@pytest.fixture
def rq_queues():
    """The real RQ queues, emptied of what earlier tests left."""
    import django_rq

    queues = [django_rq.get_queue(name) for name in ("builds", "runs", "default")]
    for queue in queues:
        queue.empty()
    return queues


@pytest.fixture
def drain_queues(rq_queues):
    """Runs a real RQ worker in burst mode, in this process, until the queues are empty."""
    from rq import SimpleWorker

    def drain() -> None:
        SimpleWorker(rq_queues, connection=rq_queues[0].connection).work(burst=True)

    return drain
