"""Sessions in a real browser against the live stack (its session host starts real sandboxes):
start a session from the list, write a file in the editor and find it in the tree after a
reload, run a shell command and read its output, follow a background process's log and stop
it, run an agent's task in the session and watch it stream, and stop, start, pause, resume
and delete sessions."""

import time
from uuid import UUID

import pytest
from playwright.sync_api import expect

from agents.tests.packages import agent_files, pack_files
from executions.tests.live import Client, deploy
from workspaces.models import Session

pytestmark = pytest.mark.slow

# Starting a sandbox (and mounting its workspace) on a small shared machine.
START_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 90_000


@pytest.fixture
def sessions(live, owner, open_browser):
    """`sessions.api` (the owner's API client of the live server) and `sessions.new(...)`: a
    session made through the API, active. Every session of the test is deleted after it, so
    no sandbox outlives the test; the test's browsers are closed first (a page whose session
    is deleted goes to the list meanwhile)."""

    class Sessions:
        api = Client(live, owner)

        def new(self, **body) -> dict:
            answer = self.api.post("/sessions", json=body)
            assert answer.status_code == 201, answer.text
            session = answer.json()
            assert session["status"] == "active", session
            return session

    yield Sessions()
    open_browser.close_all()
    for pk in Session.objects.filter(owner=owner).values_list("pk", flat=True):
        Sessions.api.delete(f"/sessions/{pk}")


def session_of(page) -> Session:
    return Session.objects.get(pk=page.locator("#session").get_attribute("data-id"))


def test_start_a_session_write_a_file_and_find_it_after_a_reload(
    open_browser, owner, sessions, shot
):
    page = open_browser(owner)
    page.click("nav >> text=Sessions")
    expect(page.locator("h1")).to_have_text("Sessions")
    expect(page.locator("h2", has_text="No sessions yet")).to_be_visible()
    shot(page, "sessions-empty")

    # A plain Python session, from the form; its page opens once the sandbox answers.
    expect(page.locator("#id_agent")).to_have_value("")
    page.fill("#id_workspace_mb", "64")
    page.click("#create-session")
    expect(page.locator("#session")).to_be_visible(timeout=START_TIMEOUT_MS)
    expect(page.locator("#session-status")).to_have_text("active")
    expect(page.locator(".message-success")).to_contain_text("Session started")
    session = session_of(page)
    assert session.owner == owner and session.status == "active"
    assert session.workspace_mb == 64 and session.agent is None
    expect(page.locator("#tree-empty")).to_be_visible()  # a new workspace is empty

    # A new file in a new folder, written through the API with the cookie and CSRF header.
    page.click("#file-new")
    page.fill("#file-path", "notes/hello.txt")
    page.fill("#file-content", "Hello from the editor.\nSecond line.\n")
    with page.expect_response(
        lambda r: (
            r.url.endswith(f"/api/v1/sessions/{session.pk}/files/content")
            and r.request.method == "POST"
        )
    ) as answer:
        page.click("#file-save")
    assert answer.value.status == 200
    assert answer.value.request.header_value("x-csrftoken")
    expect(page.locator("#file-status")).to_contain_text("Saved notes/hello.txt")
    expect(page.locator('#file-tree li[data-path="notes"]')).to_be_visible()
    shot(page, "session-file-saved")

    # After a reload the tree is read from the workspace again.
    page.reload()
    folder = page.locator('#file-tree li[data-path="notes"]')
    expect(folder).to_have_attribute("data-type", "directory")
    folder.locator("> .tree-item").click()
    expect(folder).to_have_attribute("aria-expanded", "true")
    file = page.locator('#file-tree li[data-path="notes/hello.txt"]')
    expect(file).to_be_visible()
    file.locator(".tree-item").click()
    expect(page.locator("#file-path")).to_have_value("notes/hello.txt")
    expect(page.locator("#file-content")).to_have_value("Hello from the editor.\nSecond line.\n")
    expect(page.locator("#file-content")).to_be_editable()
    shot(page, "session-file-open")

    # The API reads what the editor wrote.
    read = sessions.api.get(
        f"/sessions/{session.pk}/files/content", params={"path": "notes/hello.txt"}
    ).json()
    assert read["content"] == "Hello from the editor.\nSecond line.\n"

    # An edit saved over it replaces it.
    page.fill("#file-content", "Edited.\n")
    page.click("#file-save")
    expect(page.locator("#file-status")).to_contain_text("Saved notes/hello.txt")
    page.reload()
    page.locator('#file-tree li[data-path="notes"] > .tree-item').click()
    page.locator('#file-tree li[data-path="notes/hello.txt"] .tree-item').click()
    expect(page.locator("#file-content")).to_have_value("Edited.\n")

    # The list shows it, with its workspace.
    page.click("nav >> text=Sessions")
    row = page.locator(f'#sessions tr[data-session="{session.pk}"]')
    expect(row.locator(".badge")).to_have_text("active")
    expect(row).to_contain_text("plain Python")
    expect(row.locator("[data-workspace]")).to_contain_text("of 64 MB")
    shot(page, "sessions-list")


def test_run_a_command_and_read_its_output(open_browser, owner, sessions, shot):
    session = sessions.new()
    written = sessions.api.post(
        f"/sessions/{session['id']}/files/content",
        json={"path": "data/numbers.txt", "content": "3\n1\n2\n"},
    )
    assert written.status_code == 200, written.text
    page = open_browser(owner)
    page.goto(f"/sessions/{session['id']}/")
    expect(page.locator("#session-status")).to_have_text("active")

    page.fill("#shell-command", "sort data/numbers.txt; echo oops >&2; exit 3")
    page.click("#shell-run")
    run = page.locator("#shell-log .shell-run").last
    expect(run.locator(".shell-exit")).to_have_text("exit 3")
    expect(run.locator(".shell-cmd")).to_have_text("sort data/numbers.txt; echo oops >&2; exit 3")
    expect(run.locator(".shell-stdout")).to_have_text("1\n2\n3\n")
    expect(run.locator(".shell-stderr")).to_have_text("oops\n")
    expect(run).to_have_attribute("data-exit-code", "3")

    # The commands run in the workspace, and a file a command makes shows in the tree.
    page.fill("#shell-command", "pwd && echo made > made.txt")
    page.press("#shell-command", "Enter")
    second = page.locator("#shell-log .shell-run").nth(1)
    expect(second.locator(".shell-exit")).to_have_text("exit 0")
    expect(second.locator(".shell-stdout")).to_have_text("/workspace\n")
    expect(second.locator(".shell-stderr")).to_be_hidden()
    expect(page.locator('#file-tree li[data-path="made.txt"]')).to_be_visible()
    shot(page, "session-shell")

    # A command past its timeout is killed, and says so.
    page.fill("#shell-timeout", "1")
    page.fill("#shell-command", "echo before; sleep 30")
    page.click("#shell-run")
    third = page.locator("#shell-log .shell-run").nth(2)
    expect(third.locator(".shell-exit")).to_have_text("timed out")
    expect(third.locator(".shell-stdout")).to_have_text("before\n")


def test_start_follow_and_stop_a_process(open_browser, owner, sessions, shot):
    session = sessions.new()
    page = open_browser(owner)
    page.goto(f"/sessions/{session['id']}/")
    expect(page.locator("#processes-empty")).to_be_visible()

    page.fill("#process-command", 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.2; done')
    page.fill("#process-name", "ticker")
    page.click("#process-start")
    row = page.locator("#process-rows tr").first
    expect(row).to_contain_text("ticker")
    expect(row.locator(".badge")).to_have_text("running")
    log = page.locator("#process-log")
    expect(log).to_contain_text("tick 3")  # followed as it writes
    expect(page.locator("#process-log-state")).to_have_text("live")
    shot(page, "session-process")

    row.locator("button[data-action=stop]").click()
    expect(row.locator(".badge")).not_to_have_text("running")
    expect(page.locator("#process-log-state")).not_to_have_text("live")
    listed = sessions.api.get(f"/sessions/{session['id']}/processes").json()
    assert [p["status"] for p in listed] != ["running"]


def test_run_a_task_in_the_session_and_watch_it_stream(open_browser, live, owner, sessions, shot):
    agent_id = deploy(sessions.api, "story")
    page = open_browser(owner)
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto("/sessions/")
    page.select_option("#id_agent", agent_id)
    page.click("#create-session")
    expect(page.locator("#session-status")).to_have_text("active", timeout=START_TIMEOUT_MS)
    session = session_of(page)
    assert str(session.agent_id) == agent_id
    expect(page.locator("#stream-state")).to_have_text("live")  # the session's socket

    page.fill("#task-input", '{"topic": "a heron", "delay": 0.2}')
    page.click("#task-run")
    expect(page.locator("#task")).to_be_visible()
    text = page.locator("#task-transcript .t-text")
    expect(text).to_contain_text("Once upon a time there was a heron", timeout=RUN_TIMEOUT_MS)
    assert "And that was enough." not in text.inner_text()  # it streams while the task runs
    expect(page.locator("#task-status")).to_have_text("running")
    shot(page, "session-task-streaming")

    expect(page.locator("#task-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(text).to_contain_text("And that was enough.")
    expect(page.locator("#task-transcript .t-final")).to_contain_text("Completed")
    expect(page.locator("#task-output-box")).to_be_visible()
    link = page.locator("#task-link").get_attribute("href")
    execution_id = link.strip("/").split("/")[-1]
    execution = sessions.api.get(f"/executions/{execution_id}").json()
    assert execution["status"] == "completed"
    assert text.inner_text() == execution["output"]
    assert session.tasks.get().pk == UUID(execution_id)  # a task of this session
    # It came over the session's own socket, not the run's.
    assert [url for url in sockets if "/ws/sessions/" in url or "/ws/executions/" in url] == [
        f"{live.url.replace('http', 'ws')}/ws/sessions/{session.pk}/"
    ]
    shot(page, "session-task-completed")


# A task that writes into the session's workspace, then waits (bounded) for the test to answer
# by making `go.txt`, so the test can see the write in the tree while the task still runs.
SCRIBE = """\
import time


def handle(payload, ctx):
    notes = ctx.workspace.read("notes.txt")
    ctx.workspace.write("out/summary.txt", notes.upper())
    yield "wrote out/summary.txt; "
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(entry["name"] == "go.txt" for entry in ctx.workspace.list()):
            yield "done"
            return
        time.sleep(0.1)
    raise TimeoutError("go.txt never came")
"""


def deploy_files(client: Client, name: str, files: dict) -> str:
    agent = client.post("/agents", json={"name": name}).json()
    package = {"file": (f"{name}.tar.gz", pack_files(files))}
    assert client.post(f"/agents/{agent['id']}/versions", files=package).status_code == 201
    for _ in range(600):
        version = client.get(f"/agents/{agent['id']}/versions/1").json()
        if version["status"] in ("ready", "failed"):
            assert version["status"] == "ready", version["build_log"]
            return agent["id"]
        time.sleep(0.2)
    raise AssertionError(f"{name} was not built")


def test_a_file_a_task_writes_shows_in_the_tree_while_it_runs(open_browser, owner, sessions):
    agent_id = deploy_files(sessions.api, "scribe", agent_files(SCRIBE, name="scribe"))
    session = sessions.new(agent_id=agent_id)
    files = f"/sessions/{session['id']}/files/content"
    sessions.api.post(files, json={"path": "notes.txt", "content": "quiet words"})
    page = open_browser(owner)
    page.goto(f"/sessions/{session['id']}/")
    expect(page.locator('#file-tree li[data-path="notes.txt"]')).to_be_visible()
    expect(page.locator("#stream-state")).to_have_text("live")

    page.click("#task-run")
    expect(page.locator("#task-transcript .t-text")).to_contain_text(
        "wrote out/summary.txt", timeout=RUN_TIMEOUT_MS
    )
    folder = page.locator('#file-tree li[data-path="out"]')
    expect(folder).to_be_visible()  # told by the session's socket (`file_changed`)
    expect(page.locator("#task-status")).to_have_text("running")
    folder.locator("> .tree-item").click()
    page.locator('#file-tree li[data-path="out/summary.txt"] .tree-item').click()
    expect(page.locator("#file-content")).to_have_value("QUIET WORDS")

    sessions.api.post(files, json={"path": "go.txt", "content": ""})
    expect(page.locator("#task-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#task-transcript .t-text")).to_have_text("wrote out/summary.txt; done")


def test_a_failing_task_says_why(open_browser, owner, sessions):
    agent_id = deploy(sessions.api, "broken")
    session = sessions.new(agent_id=agent_id)
    page = open_browser(owner)
    page.goto(f"/sessions/{session['id']}/")
    expect(page.locator("#stream-state")).to_have_text("live")
    page.fill("#task-input", '"please"')
    page.click("#task-run")
    expect(page.locator("#task-status")).to_have_text("failed", timeout=RUN_TIMEOUT_MS)
    final = page.locator("#task-transcript .t-final")
    expect(final).to_have_count(1)
    expect(final).to_contain_text("Failed")
    expect(final).to_contain_text("broken on purpose (input: 'please')")
    expect(page.locator("#task-output-box")).to_be_hidden()
    expect(page.locator("#task-run")).to_be_enabled()  # another task may run


def test_without_the_session_socket_a_task_is_followed_over_its_run_socket(
    open_browser, live, owner, sessions, shot
):
    agent_id = deploy(sessions.api, "tools")
    session = sessions.new()  # plain Python: each task names its agent
    page = open_browser(owner)
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    # The session's socket refuses, as a server without it would.
    page.route_web_socket("**/ws/sessions/**", lambda socket: socket.close(code=4404))
    page.goto(f"/sessions/{session['id']}/")
    expect(page.locator("#stream-state")).to_have_text("unavailable")

    expect(page.locator("#task-agent")).to_have_value(agent_id)
    page.fill("#task-input", '{"expression": "6 * 7"}')
    page.click("#task-run")
    expect(page.locator("#task-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    call = page.locator("#task-transcript .t-call")
    expect(call).to_contain_text("calculator")
    expect(call.locator("pre")).to_contain_text('"expression": "6 * 7"')
    expect(page.locator("#task-transcript .t-result pre")).to_contain_text('"value": 42')
    expect(page.locator("#task-transcript .t-text")).to_have_text("6 * 7 = 42")
    expect(page.locator("#task-output")).to_contain_text('"value": 42')
    task = Session.objects.get(pk=session["id"]).tasks.get()
    assert str(task.agent_id) == agent_id and task.status == "completed"
    assert any(url.endswith(f"/ws/executions/{task.pk}/?after=0") for url in sockets)
    shot(page, "session-task-tools")


def test_stop_start_and_delete_a_session_from_the_list(open_browser, owner, other, sessions, shot):
    session = sessions.new()
    sessions.api.post(
        f"/sessions/{session['id']}/files/content", json={"path": "kept.txt", "content": "kept"}
    )
    page = open_browser(owner)
    page.goto("/sessions/")
    row = page.locator(f'#sessions tr[data-session="{session["id"]}"]')
    expect(row.locator(".badge")).to_have_text("active")

    row.locator("button[data-action=stop]").click()  # its confirm() is accepted
    expect(page.locator(".message-success")).to_contain_text("Session stopped")
    expect(row.locator(".badge")).to_have_text("stopped")
    assert Session.objects.get(pk=session["id"]).status == "stopped"

    # The stopped session's page says so and offers a start; the start keeps the workspace.
    row.locator("a.mono").click()
    expect(page.locator("#session-notice")).to_contain_text("The session is stopped")
    expect(page.locator("#file-tree")).to_have_count(0)
    page.click("#start-button")
    expect(page.locator("#session-status")).to_have_text("active", timeout=START_TIMEOUT_MS)
    expect(page.locator('#file-tree li[data-path="kept.txt"]')).to_be_visible()
    shot(page, "session-restarted")

    # A pause freezes it: the page says so until a resume opens the workspace again.
    page.click("#pause-button")
    expect(page.locator(".message-success")).to_contain_text("Session paused")
    expect(page.locator("#session-status")).to_have_text("paused")
    expect(page.locator("#session-notice")).to_contain_text("Paused")
    expect(page.locator("#file-tree")).to_have_count(0)
    assert Session.objects.get(pk=session["id"]).status == "paused"
    page.click("#resume-button")
    expect(page.locator(".message-success")).to_contain_text("Session resumed")
    expect(page.locator("#session-status")).to_have_text("active")
    expect(page.locator('#file-tree li[data-path="kept.txt"]')).to_be_visible()

    # Someone else's session is not found.
    stranger = open_browser(other)
    response = stranger.goto(f"/sessions/{session['id']}/")
    assert response.status == 404
    stranger.goto("/sessions/")
    expect(stranger.locator("#sessions")).to_have_count(0)

    page.goto("/sessions/")
    row.locator("button[data-action=delete]").click()
    expect(page.locator(".message-success")).to_contain_text("deleted")
    expect(row).to_have_count(0)
    assert not Session.objects.filter(pk=session["id"]).exists()
