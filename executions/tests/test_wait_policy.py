"""How long a request may block waiting for a run to end (`services.wait_seconds`)."""

from executions import services
from executions.models import Execution


def test_a_wait_asked_for_is_kept_up_to_the_server_maximum(settings):
    settings.AIMOS_MAX_WAIT_SECONDS = 30
    run = Execution(timeout_seconds=120)

    assert services.wait_seconds(run, 2.5, until_end=False) == 2.5
    assert services.wait_seconds(run, 600, until_end=True) == 30
    assert services.wait_seconds(run, 0, until_end=True) == 0


def test_without_a_wait_the_answer_comes_at_once():
    assert services.wait_seconds(Execution(timeout_seconds=5), None, until_end=False) == 0


def test_clients_expecting_the_outcome_wait_for_the_whole_run(settings):
    settings.AIMOS_MAX_WAIT_SECONDS = 300
    run = Execution(timeout_seconds=20)

    assert services.wait_seconds(run, None, until_end=True) == 20 + services.START_SLACK_SECONDS

    settings.AIMOS_MAX_WAIT_SECONDS = 10
    assert services.wait_seconds(run, None, until_end=True) == 10
