"""Dashboard pages of executions: the list with its filters and pages, the run's page and its
transcript, the controls, restore and fork from a checkpoint, and outsiders' 404s."""

import pytest
from django.urls import reverse

from executions import events as event_log
from executions import outcomes, services
from executions.models import Execution
from executions.tests.runs import deploy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def echo(owner, drain_queues):
    return deploy(owner, "echo", drain_queues)


ROW = 'class="mono" href="/executions/'


def pending(user, agent, **extra) -> Execution:
    """A recorded run no worker will take (not queued), to look at and control."""
    return services.start_execution(user, agent, enqueue=False, **extra)


def test_execution_pages_want_a_login(client, owner, echo):
    execution = pending(owner, echo)
    for url in (reverse("execution-list"), reverse("execution-detail", args=[execution.pk])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    assert client.post(reverse("execution-cancel", args=[execution.pk])).status_code == 302
    execution.refresh_from_db()
    assert execution.status == "pending"


def test_list_filters_by_status_and_agent_and_pages(page, owner, other, echo, drain_queues):
    story = deploy(owner, "story", drain_queues)
    for _ in range(27):
        pending(owner, echo)
    done = pending(owner, story)
    outcomes.finish(done, "completed", from_states=["pending"])
    foreign = pending(other, deploy(other, "echo", drain_queues, name="theirs"))

    first = page.get(reverse("execution-list")).content.decode()
    assert "Page 1 of 2 · 28 runs" in first
    assert str(foreign.pk)[:8] not in first

    second = page.get(reverse("execution-list"), {"page": 2}).content.decode()
    assert "Page 2 of 2" in second
    assert second.count(ROW) == 3  # 28 runs, 25 a page

    completed = page.get(reverse("execution-list"), {"status": "completed"}).content.decode()
    assert str(done.pk)[:8] in completed
    assert "badge-pending" not in completed

    of_story = page.get(reverse("execution-list"), {"agent": str(story.pk)}).content.decode()
    assert str(done.pk)[:8] in of_story
    assert of_story.count(ROW) == 1
    paged = page.get(reverse("execution-list"), {"agent": str(echo.pk), "status": "pending"})
    assert f'href="?status=pending&amp;agent={echo.pk}&amp;page=2"' in paged.content.decode()


def test_execution_page_renders_the_run_as_it_is(page, owner, echo):
    execution = pending(owner, echo, input={"topic": "a heron"})
    event_log.record_events(
        execution.pk,
        [
            (
                "run_started",
                {"run_id": str(execution.pk), "agent_id": str(echo.pk), "version": "v1"},
            ),
            ("content_delta", {"content": "Once upon "}),
            ("content_delta", {"content": "a time"}),
            ("tool_call", {"call_id": "c1", "name": "calculator", "args": {"expression": "6*7"}}),
            ("tool_result", {"call_id": "c1", "name": "calculator", "result": {"value": 42}}),
            ("log", {"level": "info", "message": "<b>thinking</b>", "source": "agent"}),
            ("checkpoint", {"label": "half way", "state": {"count": 3}}),
        ],
    )
    body = page.get(reverse("execution-detail", args=[execution.pk])).content.decode()
    assert '<div class="t-item t-text" data-seq="2">Once upon a time</div>' in body
    assert "<code>calculator</code>" in body
    assert "&lt;b&gt;thinking&lt;/b&gt;" in body  # agent output is escaped
    assert "data-label>half way</span>" in body
    assert 'data-last-seq="7"' in body
    assert f'data-ws="/ws/executions/{execution.pk}/"' in body
    assert "&quot;topic&quot;: &quot;a heron&quot;" in body


def test_cancel_from_the_page_calls_the_service(page, owner, echo):
    execution = pending(owner, echo)
    response = page.post(reverse("execution-cancel", args=[execution.pk]), follow=True)
    execution.refresh_from_db()
    assert execution.status == "cancelled"
    assert "Execution cancelled." in response.content.decode()
    assert execution.events.filter(type="run_cancelled").exists()


def test_controls_answer_json_to_the_pages_script(page, owner, echo):
    execution = pending(owner, echo)
    url = reverse("execution-pause", args=[execution.pk])
    refused = page.post(url, HTTP_ACCEPT="application/json")
    assert refused.status_code == 409
    assert refused.json()["status"] == "pending"
    assert "Only a running execution can be paused" in refused.json()["detail"]

    cancelled = page.post(
        reverse("execution-cancel", args=[execution.pk]), HTTP_ACCEPT="application/json"
    )
    assert cancelled.status_code == 200
    assert cancelled.json() == {"detail": "Execution cancelled.", "status": "cancelled"}


def test_a_refused_control_is_a_message_on_the_page(page, owner, echo):
    execution = pending(owner, echo)
    response = page.post(reverse("execution-resume", args=[execution.pk]), follow=True)
    assert (
        "Only a paused execution can be resumed; this one is pending" in response.content.decode()
    )
    assert page.get(reverse("execution-pause", args=[execution.pk])).status_code == 405


def checkpointed(owner, agent, state) -> tuple[Execution, str]:
    execution = pending(owner, agent, input={"to": 5})
    event_log.record_events(execution.pk, [("checkpoint", {"label": "step 2", "state": state})])
    outcomes.finish(execution, "completed", from_states=["pending"], output={"count": 5})
    return execution, str(execution.checkpoints.get().pk)


def test_restore_starts_a_new_run_from_the_checkpoint(page, owner, echo):
    source, checkpoint = checkpointed(owner, echo, {"count": 2})
    response = page.post(reverse("checkpoint-restore", args=[checkpoint]), {"input": ""})
    restored = Execution.objects.exclude(pk=source.pk).get()
    assert response["Location"] == reverse("execution-detail", args=[restored.pk])
    assert restored.initial_state == {"count": 2}
    assert restored.input == {"to": 5}
    assert restored.parent_id == source.pk
    assert str(restored.source_checkpoint_id) == checkpoint


def test_fork_takes_the_new_input_and_refuses_bad_json(page, owner, echo):
    source, checkpoint = checkpointed(owner, echo, {"count": 2})
    bad = page.post(
        reverse("checkpoint-fork", args=[checkpoint]), {"input": "{to: 9}"}, follow=True
    )
    assert "No new run: Not valid JSON" in bad.content.decode()
    assert Execution.objects.count() == 1

    page.post(reverse("checkpoint-fork", args=[checkpoint]), {"input": '{"to": 9}', "version": "1"})
    fork = Execution.objects.exclude(pk=source.pk).get()
    assert fork.input == {"to": 9}
    assert fork.initial_state == {"count": 2}
    assert fork.version.number == 1


def test_another_users_run_is_a_404_everywhere(client, owner, other, echo):
    execution, checkpoint = checkpointed(owner, echo, {"count": 1})
    running = pending(owner, echo)
    client.force_login(other)
    assert client.get(reverse("execution-detail", args=[execution.pk])).status_code == 404
    for name in ("execution-pause", "execution-resume", "execution-cancel"):
        assert client.post(reverse(name, args=[running.pk])).status_code == 404
    for name in ("checkpoint-restore", "checkpoint-fork"):
        assert client.post(reverse(name, args=[checkpoint]), {"input": ""}).status_code == 404
    assert str(execution.pk)[:8] not in client.get(reverse("execution-list")).content.decode()
    running.refresh_from_db()
    assert running.status == "pending"
    assert Execution.objects.count() == 2


def test_an_admin_sees_everyones_runs(client, admin, owner, echo):
    execution = pending(owner, echo)
    client.force_login(admin)
    assert client.get(reverse("execution-detail", args=[execution.pk])).status_code == 200
