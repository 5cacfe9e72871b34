"""Files, search, shell and processes of an active session through the API, down to a real
session daemon on the session's socket (see `daemons.py`)."""

import base64
import json
import os
import select
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from workspaces import operations
from workspaces.models import Session
from workspaces.streams import relay
from workspaces.tests.daemons import API, TEST_HOST

pytestmark = pytest.mark.django_db

SSE = {"HTTP_ACCEPT": "text/event-stream"}


@pytest.fixture
def url(active_session, daemon):
    return lambda rest="": f"{API}/sessions/{active_session.pk}{rest}"


def write(api, url, path, content, encoding="utf-8"):
    response = api.post(
        url("/files/content"),
        {"path": path, "content": content, "encoding": encoding},
        format="json",
    )
    assert response.status_code == 200, response.content
    return response.json()


def streamed(response) -> bytes:
    async def collect(chunks):
        return [chunk async for chunk in chunks]

    chunks = async_to_sync(collect)(response.streaming_content)
    return b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks)


def sse_events(response) -> list[tuple[str, dict]]:
    return parse_sse(streamed(response))


def parse_sse(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


# --- files ---------------------------------------------------------------------------------------


def test_a_written_file_reads_back_as_text_and_is_listed(owner_api, url):
    written = write(owner_api, url, "notes/today.txt", "hello\nworld\n")

    assert written == {"path": "notes/today.txt", "size": 12}
    read = owner_api.get(url("/files/content"), {"path": "notes/today.txt"}).json()
    assert read["content"] == "hello\nworld\n"
    assert read["encoding"] == "utf-8"
    assert (read["size"], read["offset"], read["length"], read["eof"]) == (12, 0, 12, True)
    listing = owner_api.get(url("/files"), {"path": "notes"}).json()
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("today.txt", "file", 12)
    ]
    root = owner_api.get(url("/files")).json()
    assert [(e["name"], e["type"]) for e in root["entries"]] == [("notes", "directory")]


def test_bytes_that_are_not_utf8_come_back_as_base64(owner_api, url):
    data = bytes(range(256))
    write(owner_api, url, "blob.bin", base64.b64encode(data).decode(), encoding="base64")

    read = owner_api.get(url("/files/content"), {"path": "blob.bin"}).json()

    assert read["encoding"] == "base64"
    assert base64.b64decode(read["content"]) == data


def test_offset_and_length_read_a_part_of_a_file(owner_api, url):
    write(owner_api, url, "digits.txt", "0123456789")

    read = owner_api.get(url("/files/content"), {"path": "digits.txt", "offset": 3, "length": 4})

    assert read.json()["content"] == "3456"
    assert read.json()["eof"] is False


def test_raw_content_is_the_bytes_with_their_type_and_never_runs_as_a_page(owner_api, url):
    write(owner_api, url, "page.html", "<script>alert(1)</script>")

    response = owner_api.get(url("/files/content"), {"path": "page.html", "raw": "1"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "sandbox" in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert streamed(response) == b"<script>alert(1)</script>"


def test_an_accept_without_json_asks_for_the_raw_bytes(owner_api, url):
    write(owner_api, url, "a.txt", "plain")

    response = owner_api.get(url("/files/content"), {"path": "a.txt"}, HTTP_ACCEPT="text/plain")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert streamed(response) == b"plain"


@pytest.mark.parametrize(
    ("header", "body", "content_range"),
    [
        ("bytes=2-5", b"2345", "bytes 2-5/10"),
        ("bytes=7-", b"789", "bytes 7-9/10"),
        ("bytes=-3", b"789", "bytes 7-9/10"),
        ("bytes=8-100", b"89", "bytes 8-9/10"),
    ],
)
def test_a_range_header_reads_that_part_of_the_file(owner_api, url, header, body, content_range):
    write(owner_api, url, "digits.txt", "0123456789")

    response = owner_api.get(
        url("/files/content"), {"path": "digits.txt", "raw": "1"}, HTTP_RANGE=header
    )

    assert response.status_code == 206
    assert response["Content-Range"] == content_range
    assert response["Content-Length"] == str(len(body))
    assert streamed(response) == body


def test_a_range_past_the_end_is_a_416_naming_the_size(owner_api, url):
    write(owner_api, url, "digits.txt", "0123456789")

    response = owner_api.get(
        url("/files/content"), {"path": "digits.txt", "raw": "1"}, HTTP_RANGE="bytes=10-"
    )

    assert response.status_code == 416
    assert response["Content-Range"] == "bytes */10"
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "range_not_satisfiable"


def test_an_upload_is_written_and_downloads_as_an_attachment(owner_api, url):
    data = b"\x00\x01binary\xff" * 1000
    upload = SimpleUploadedFile("data.bin", data)

    response = owner_api.post(
        url("/files/upload"), {"file": upload, "path": "in/data.bin"}, format="multipart"
    )

    assert response.status_code == 201, response.content
    assert response.json() == {"path": "in/data.bin", "size": len(data)}
    download = owner_api.get(url("/files/download"), {"path": "in/data.bin"})
    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"] == 'attachment; filename="data.bin"'
    assert streamed(download) == data


def test_any_file_name_downloads_with_a_header_that_names_it(owner_api, url, daemon):
    (daemon.workspace / 'odd "name"\nhere é.txt').write_text("odd")

    response = owner_api.get(url("/files/download"), {"path": 'odd "name"\nhere é.txt'})

    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        "attachment; filename*=utf-8''odd%20%22name%22%0Ahere%20%C3%A9.txt"
    )
    assert streamed(response) == b"odd"


def test_a_file_over_the_sandbox_cap_is_refused_too_large(owner_api, url):
    # The daemon of these tests takes files of up to 1 MiB.
    upload = SimpleUploadedFile("big.bin", b"x" * (1024 * 1024 + 1))

    response = owner_api.post(url("/files/upload"), {"file": upload}, format="multipart")

    assert response.status_code == 400
    assert response.json()["code"] == "too_large"


def test_a_json_body_too_large_is_a_413_pointing_at_the_upload(owner_api, url, settings):
    response = owner_api.post(
        url("/files/content"),
        {"path": "big.txt", "content": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)},
        format="json",
    )

    assert response.status_code == 413
    assert "files/upload" in response.json()["detail"]


def test_delete_removes_a_file_and_a_folder_only_when_recursive(owner_api, url):
    write(owner_api, url, "dir/a.txt", "a")

    refused = owner_api.delete(url("/files") + "?path=dir")
    assert refused.status_code == 400
    assert owner_api.delete(url("/files") + "?path=dir&recursive=true").status_code == 204
    assert owner_api.get(url("/files")).json()["entries"] == []


def test_the_workspace_root_cannot_be_deleted(owner_api, url):
    response = owner_api.delete(url("/files") + "?path=.&recursive=true")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_path"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("../outside.txt", 400, "invalid_path"),
        ("/etc/passwd", 400, "invalid_path"),
        ("missing.txt", 404, "not_found"),
        ("folder", 400, "not_a_file"),
    ],
)
def test_the_daemons_refusals_are_errors_with_its_code_and_message(
    owner_api, url, path, status, code
):
    write(owner_api, url, "folder/x.txt", "x")

    response = owner_api.get(url("/files/content"), {"path": path})

    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert body["detail"]


def test_a_symbolic_link_is_never_followed(owner_api, url, daemon):
    (daemon.workspace / "link").symlink_to("/etc/passwd")

    response = owner_api.get(url("/files/content"), {"path": "link"})

    assert response.status_code == 400
    assert response.json()["code"] == "symlink"
    listed = owner_api.get(url("/files")).json()["entries"]
    assert [(e["name"], e["type"]) for e in listed] == [("link", "symlink")]


# --- search --------------------------------------------------------------------------------------


def test_file_search_and_grep_find_what_is_there(owner_api, url):
    write(owner_api, url, "src/app.py", "import os\nprint('Hello')\n")
    write(owner_api, url, "src/lib/util.py", "def hello():\n    return 1\n")
    write(owner_api, url, "README.md", "hello readme\n")

    found = owner_api.post(url("/search/files"), {"pattern": "**/*.py"}, format="json")
    grep = owner_api.post(
        url("/search/grep"),
        {"pattern": "hello", "glob": "*.py", "ignore_case": True},
        format="json",
    )

    assert found.status_code == 200
    assert sorted(found.json()["matches"]) == ["src/app.py", "src/lib/util.py"]
    assert grep.status_code == 200
    matches = sorted((m["path"], m["line"]) for m in grep.json()["matches"])
    assert matches == [("src/app.py", 2), ("src/lib/util.py", 1)]


def test_a_bad_regular_expression_is_a_400(owner_api, url):
    response = owner_api.post(url("/search/grep"), {"pattern": "("}, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_pattern"


# --- shell ---------------------------------------------------------------------------------------


def test_a_shell_command_answers_with_its_output_and_exit_code(owner_api, url):
    write(owner_api, url, "hello.py", "print(6 * 7)")

    response = owner_api.post(
        url("/shell"), {"command": "cat hello.py; echo oops >&2; exit 3"}, format="json"
    )

    assert response.status_code == 200
    assert response.json() == {
        "exit_code": 3,
        "stdout": "print(6 * 7)",
        "stderr": "oops\n",
        "timed_out": False,
        "truncated": False,
    }


def test_a_command_past_its_timeout_is_killed(owner_api, url):
    response = owner_api.post(url("/shell"), {"command": "sleep 30", "timeout": 0.5}, format="json")

    assert response.status_code == 200
    assert response.json()["timed_out"] is True


def test_a_streamed_command_sends_its_output_then_its_exit(owner_api, url):
    response = owner_api.post(
        url("/shell"), {"command": "echo one; echo two >&2; exit 4"}, format="json", **SSE
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == ("exit", {"exit_code": 4, "timed_out": False, "truncated": False})
    assert "".join(e[1]["data"] for e in events if e[0] == "stdout") == "one\n"
    assert "".join(e[1]["data"] for e in events if e[0] == "stderr") == "two\n"


def test_a_stream_whose_reader_went_away_ends_its_command_at_once(url, active_session):
    stream = operations.shell_stream(active_session, "echo $$; exec sleep 300", timeout=600)

    async def first_then_leave():
        events = relay(stream, None)
        first = await events.__anext__()
        await events.aclose()  # as when the client disconnects
        return first

    kind, data = async_to_sync(first_then_leave)()

    assert kind == "stdout"
    # The daemon kills the command once its connection is gone (it may be gone already).
    try:
        pidfd = os.pidfd_open(int(data["data"]))
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([pidfd], [], [], 30)
        assert readable, "the command outlived its stream"
    finally:
        os.close(pidfd)


# --- processes -----------------------------------------------------------------------------------


def test_a_process_runs_in_the_background_with_its_logs_until_stopped(owner_api, url):
    started = owner_api.post(
        url("/processes"),
        {"command": "echo started; exec sleep 600", "name": "sleeper"},
        format="json",
    )
    assert started.status_code == 201, started.content
    pid = started.json()["pid"]
    assert started.json()["status"] == "running"
    follow = owner_api.get(url(f"/processes/{pid}/logs"), {"follow": "true", "tail": 10})
    assert follow["Content-Type"].startswith("text/event-stream")
    stopped = {}

    def stop():
        stopped["response"] = owner_api.post(url(f"/processes/{pid}/stop"))

    # Followed live: the process is stopped once its first line has come through.
    async def follow_then_stop(chunks) -> bytes:
        body = b""
        async for chunk in chunks:
            body += chunk
            if b"started" in body and not stopped:
                await sync_to_async(stop)()
        return body

    body = async_to_sync(follow_then_stop)(follow.streaming_content)

    assert stopped["response"].status_code == 200
    assert stopped["response"].json()["status"] == "killed"
    events = parse_sse(body)
    assert "".join(data["data"] for kind, data in events if kind == "log") == "started\n"
    assert events[-1][0] == "end"
    assert (events[-1][1]["pid"], events[-1][1]["status"]) == (pid, "killed")
    listed = owner_api.get(url("/processes")).json()
    assert [(p["pid"], p["name"], p["status"]) for p in listed] == [(pid, "sleeper", "killed")]
    logs = owner_api.get(url(f"/processes/{pid}/logs"), {"tail": 5}).json()
    assert logs == {"pid": pid, "lines": ["started"]}


def test_an_unknown_process_is_a_404(owner_api, url):
    for response in (
        owner_api.post(url("/processes/999999/stop")),
        owner_api.get(url("/processes/999999/logs")),
        owner_api.get(url("/processes/999999/logs"), {"follow": "true"}),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "no_such_process"


# --- the session's state --------------------------------------------------------------------


def test_use_of_the_session_is_recorded(owner_api, url, active_session):
    Session.objects.filter(pk=active_session.pk).update(
        last_active_at=timezone.now() - timedelta(hours=1)
    )

    owner_api.get(url("/files"))

    active_session.refresh_from_db()
    assert timezone.now() - active_session.last_active_at < timedelta(minutes=1)


def test_a_session_that_is_not_active_refuses_operations_with_a_409(owner_api, url, active_session):
    Session.mark_stopped(active_session.pk, host=TEST_HOST)

    for response in (
        owner_api.get(url("/files")),
        owner_api.post(url("/shell"), {"command": "true"}, format="json"),
        owner_api.post(url("/shell"), {"command": "true"}, format="json", **SSE),
        owner_api.get(url("/processes")),
    ):
        assert response.status_code == 409
        assert response.json()["code"] == "session_not_active"


def test_a_daemon_that_does_not_answer_is_a_503(owner_api, url, daemon):
    daemon.stop()

    response = owner_api.get(url("/files"))

    assert response.status_code == 503
    assert response.json()["code"] == "session_unreachable"
