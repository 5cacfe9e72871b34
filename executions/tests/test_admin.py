"""The admin: runs, checkpoints, batches and events are readable; runs are controlled through
the services."""

import pytest

from executions import services
from executions.models import Batch, Checkpoint, Execution, ExecutionEvent
from executions.tests.runs import deploy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


@pytest.fixture
def counted(owner, drain_queues) -> Execution:
    counter = deploy(owner, "counter", drain_queues)
    run = services.start_execution(owner, counter, input={"to": 2, "delay": 0})
    drain_queues()
    run.refresh_from_db()
    assert run.status == "completed"
    return run


def test_the_execution_pages_load_with_events_and_checkpoints(admin_client, counted):
    listing = admin_client.get("/admin/executions/execution/")
    page = admin_client.get(f"/admin/executions/execution/{counted.pk}/change/")

    assert listing.status_code == 200
    assert str(counted.pk) in listing.content.decode()
    assert page.status_code == 200
    html = page.content.decode()
    assert "run_completed" in html and "content_delta" in html
    assert "step 1" in html and "step 2" in html
    assert 'name="_save"' not in html  # read-only


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("/admin/executions/execution/?status__exact=completed", "{run}"),
        ("/admin/executions/execution/?q=counter", "{run}"),
        ("/admin/executions/execution/?error_type__exact=exception", "0 executions"),
        ("/admin/executions/checkpoint/", "step 2"),
        ("/admin/executions/batch/", "0 batches"),
        ("/admin/executions/executionevent/?type__exact=checkpoint", 'field-type">checkpoint<'),
    ],
)
def test_the_lists_load(admin_client, counted, path, marker):
    response = admin_client.get(path)

    assert response.status_code == 200
    assert marker.format(run=counted.pk) in response.content.decode()


def test_the_detail_pages_of_checkpoints_batches_and_events_load(admin_client, owner, counted):
    batch = services.start_batch(owner, agent_ids=[counted.agent_id])
    checkpoint = Checkpoint.objects.filter(execution=counted).first()
    event = ExecutionEvent.objects.filter(execution=counted).first()

    for path in (
        f"/admin/executions/checkpoint/{checkpoint.pk}/change/",
        f"/admin/executions/batch/{batch.pk}/change/",
        f"/admin/executions/executionevent/{event.pk}/change/",
    ):
        response = admin_client.get(path)
        assert response.status_code == 200, path
    assert Batch.objects.count() == 1


def test_the_event_table_shows_at_most_the_last_200_events(admin_client, owner, drain_queues):
    counter = deploy(owner, "counter", drain_queues)
    run = services.start_execution(owner, counter, input={"to": 120, "delay": 0})
    drain_queues()
    run.refresh_from_db()
    assert run.last_seq > 200

    html = admin_client.get(f"/admin/executions/execution/{run.pk}/change/").content.decode()

    assert f"<td>{run.last_seq}</td>" in html
    assert f"<td>{run.last_seq - 199}</td>" in html
    assert f"<td>{run.last_seq - 200}</td><td>" not in html


def test_the_cancel_action_cancels_a_pending_run(admin_client, owner, counted):
    pending = services.start_execution(owner, counted.agent)

    response = admin_client.post(
        "/admin/executions/execution/",
        {"action": "cancel_runs", "_selected_action": [pending.pk, counted.pk]},
        follow=True,
    )

    assert response.status_code == 200
    pending.refresh_from_db()
    assert pending.status == "cancelled"
    assert pending.events.get().type == "run_cancelled"
    html = response.content.decode()
    assert "cancel requested (cancelled)" in html
    assert "already ended" in html  # the completed one is refused, not changed
    counted.refresh_from_db()
    assert counted.status == "completed"


def test_the_pause_action_refuses_a_pending_run(admin_client, owner, counted):
    pending = services.start_execution(owner, counted.agent)

    response = admin_client.post(
        "/admin/executions/execution/",
        {"action": "pause_runs", "_selected_action": [pending.pk]},
        follow=True,
    )

    assert "Only a running execution can be paused" in response.content.decode()
    pending.refresh_from_db()
    assert pending.status == "pending"
