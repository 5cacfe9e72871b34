"""Sessions API: sessions (create, list, get, start, pause, resume, stop, delete) and what is
done inside a running one — files, search, shell and processes. Views validate the request, call one
service or operation and render the result; the Crogia reference paths (`/api/sessions…`)
are these same views (`aimos.compat`)."""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from agents import services as agents
from agents.services import PayloadTooLarge
from core.errors import ServiceError
from core.errors import error_responses as errors
from executions.api import StreamFrameSerializer
from executions.streams import EventStreamRenderer
from workspaces import operations, services, streams
from workspaces.choices import SessionStatus
from workspaces.models import Session

SSE = "text/event-stream"
MAX_PATH = 4096
# A path in a query string: percent-encoded, 1024 characters stay within the 16 KiB request
# line the web server takes (daphne drops the connection past it).
MAX_QUERY_PATH = 1024
MAX_PATTERN = 1000
MAX_COMMAND = 100_000
# The longest a shell command run through the API may take (its answer waits for its end).
MAX_SHELL_SECONDS = 600
DEFAULT_SHELL_SECONDS = 30
MAX_TAIL = 10_000
# The largest file written in one request: JSON bodies are bounded by Django's
# DATA_UPLOAD_MAX_MEMORY_SIZE, uploads by the largest file a sandbox may write.
UPLOAD_MAX_BYTES = settings.AIMOS_MAX_FILE_MB * 1024 * 1024

# --- Serializers ---------------------------------------------------------------------------------


class SessionSerializer(serializers.ModelSerializer):
    session_id = serializers.UUIDField(source="id", read_only=True, help_text="Same as `id`.")
    user_id = serializers.UUIDField(source="owner_id", read_only=True)
    agent_id = serializers.UUIDField(read_only=True, allow_null=True)
    agent_version_id = serializers.UUIDField(source="version_id", read_only=True, allow_null=True)
    workspace_bytes = serializers.IntegerField(
        read_only=True, help_text="What the workspace holds, as its host last measured it."
    )
    workspace_deleted = serializers.BooleanField(
        read_only=True,
        help_text="The workspace was deleted (stopped longer than the retention); a start "
        "makes an empty one.",
    )

    class Meta:
        model = Session
        fields = [
            "id",
            "session_id",
            "user_id",
            "agent_id",
            "agent_version_id",
            "backend",
            "status",
            "error",
            "workspace_mb",
            "workspace_bytes",
            "workspace_deleted",
            "idle_timeout_seconds",
            "memory_mb",
            "cpus",
            "pids",
            "network",
            "created_at",
            "started_at",
            "last_active_at",
            "stopped_at",
        ]
        read_only_fields = fields


class SessionCreateSerializer(serializers.Serializer):
    agent_id = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="An agent (its id, or the name of one of yours): the session has its current "
        "version's environment and the limits its manifest asks for. None: plain Python.",
    )
    workspace_mb = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=services.MIN_WORKSPACE_MB,
        max_value=settings.AIMOS_SESSION_MAX_WORKSPACE_MB,
        help_text=f"The workspace's size (default {settings.AIMOS_SESSION_WORKSPACE_MB}).",
    )
    idle_timeout_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=services.MAX_IDLE_TIMEOUT_SECONDS,
        help_text="Stopped after this long unused, the workspace kept (default "
        f"{settings.AIMOS_SESSION_IDLE_SECONDS}).",
    )
    network = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Public network through the egress proxy, when the server allows it "
        "(else the session has none: see `network` in the answer).",
    )


class SessionFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=SessionStatus.choices, required=False)


class PathField(serializers.CharField):
    """A path relative to the workspace root ("" or "." is the root)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", MAX_PATH)
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)


class FileEntrySerializer(serializers.Serializer):
    name = serializers.CharField()
    path = serializers.CharField()
    type = serializers.ChoiceField(choices=["file", "directory", "symlink", "other"])
    size = serializers.IntegerField()
    modified = serializers.DateTimeField(allow_null=True)


class FileListSerializer(serializers.Serializer):
    path = serializers.CharField()
    entries = FileEntrySerializer(many=True)
    truncated = serializers.BooleanField(help_text="More entries than the 10,000 listed.")


class PathQuerySerializer(serializers.Serializer):
    path = PathField(required=False, allow_blank=True, default="", max_length=MAX_QUERY_PATH)


class DeleteQuerySerializer(serializers.Serializer):
    path = PathField(min_length=1, max_length=MAX_QUERY_PATH)
    recursive = serializers.BooleanField(
        required=False, default=False, help_text="Delete a folder with everything in it."
    )


class ReadQuerySerializer(serializers.Serializer):
    path = PathField(min_length=1, max_length=MAX_QUERY_PATH)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**53)
    length = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=operations.READ_BYTES,
        help_text="Bytes to read (JSON answers read at most 8 MiB at once; `eof` says whether "
        "the file goes on).",
    )
    raw = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Answer with the bytes themselves (also when Accept does not take JSON); a "
        "`Range` header then reads part of the file.",
    )


class FileContentSerializer(serializers.Serializer):
    path = serializers.CharField()
    content = serializers.CharField(help_text="The bytes read, as `encoding` says.")
    encoding = serializers.ChoiceField(
        choices=["utf-8", "base64"], help_text="utf-8 when the bytes are valid UTF-8."
    )
    size = serializers.IntegerField(help_text="The whole file's size.")
    offset = serializers.IntegerField()
    length = serializers.IntegerField(help_text="Bytes read.")
    eof = serializers.BooleanField(help_text="The read reached the end of the file.")


class FileWriteSerializer(serializers.Serializer):
    path = PathField(min_length=1)
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    encoding = serializers.ChoiceField(choices=["utf-8", "base64"], default="utf-8")

    def validate(self, attrs):
        if attrs["encoding"] == "base64":
            try:
                attrs["data"] = base64.b64decode(attrs["content"], validate=True)
            except (binascii.Error, ValueError):
                raise serializers.ValidationError({"content": "Not valid base64."}) from None
        else:
            attrs["data"] = attrs["content"].encode("utf-8", "surrogatepass")
        return attrs


class FileWrittenSerializer(serializers.Serializer):
    path = serializers.CharField()
    size = serializers.IntegerField()


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=f"At most {UPLOAD_MAX_BYTES // (1024 * 1024)} MiB.")
    path = PathField(
        required=False,
        allow_blank=True,
        help_text="Where to write it (folders are made); the uploaded file's name in the "
        "workspace root when omitted.",
    )


class GlobSerializer(serializers.Serializer):
    pattern = serializers.CharField(
        max_length=MAX_PATTERN, help_text="fnmatch pattern of paths; `**` for any depth."
    )
    path = PathField(required=False, allow_blank=True, default="")
    limit = serializers.IntegerField(required=False, default=1000, min_value=1, max_value=10_000)


class GlobResultSerializer(serializers.Serializer):
    matches = serializers.ListField(child=serializers.CharField())
    truncated = serializers.BooleanField()


class GrepSerializer(serializers.Serializer):
    pattern = serializers.CharField(
        max_length=MAX_PATTERN, trim_whitespace=False, help_text="A Python regular expression."
    )
    path = PathField(required=False, allow_blank=True, default="")
    glob = serializers.CharField(
        required=False, allow_null=True, max_length=MAX_PATTERN, help_text="Only these files."
    )
    ignore_case = serializers.BooleanField(required=False, default=False)
    max_matches = serializers.IntegerField(
        required=False, default=200, min_value=1, max_value=10_000
    )


class GrepMatchSerializer(serializers.Serializer):
    path = serializers.CharField()
    line = serializers.IntegerField()
    text = serializers.CharField()


class GrepResultSerializer(serializers.Serializer):
    matches = GrepMatchSerializer(many=True)
    truncated = serializers.BooleanField()
    timed_out = serializers.BooleanField()
    files_searched = serializers.IntegerField()
    binary_skipped = serializers.IntegerField()


class ShellSerializer(serializers.Serializer):
    command = serializers.CharField(max_length=MAX_COMMAND, trim_whitespace=False)
    timeout = serializers.FloatField(
        required=False,
        default=DEFAULT_SHELL_SECONDS,
        min_value=0.1,
        max_value=MAX_SHELL_SECONDS,
        help_text="Seconds; then the command and every process it started are killed.",
    )
    cwd = PathField(required=False, allow_blank=True, default="")
    stream = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Stream the output (SSE); when omitted, `Accept: text/event-stream` asks.",
    )


class ShellResultSerializer(serializers.Serializer):
    exit_code = serializers.IntegerField(allow_null=True)
    stdout = serializers.CharField(allow_blank=True)
    stderr = serializers.CharField(allow_blank=True)
    timed_out = serializers.BooleanField()
    truncated = serializers.BooleanField(help_text="Output past 1 MiB was discarded.")


class ProcessStartSerializer(serializers.Serializer):
    command = serializers.CharField(max_length=MAX_COMMAND, trim_whitespace=False)
    cwd = PathField(required=False, allow_blank=True, default="")
    name = serializers.CharField(required=False, allow_null=True, max_length=200)


class ProcessSerializer(serializers.Serializer):
    pid = serializers.IntegerField()
    name = serializers.CharField(allow_null=True, required=False)
    command = serializers.CharField()
    status = serializers.ChoiceField(choices=["running", "exited", "killed"])
    started_at = serializers.DateTimeField(allow_null=True, required=False)
    ended_at = serializers.DateTimeField(allow_null=True, required=False)
    exit_code = serializers.IntegerField(allow_null=True, required=False)


class LogsQuerySerializer(serializers.Serializer):
    tail = serializers.IntegerField(
        required=False, default=200, min_value=0, max_value=MAX_TAIL, help_text="Last lines."
    )
    follow = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Then what it writes, as server-sent events, until it exits.",
    )


class LogsSerializer(serializers.Serializer):
    pid = serializers.IntegerField()
    lines = serializers.ListField(child=serializers.CharField(allow_blank=True))


# --- Rendering -----------------------------------------------------------------------------------


class FileBytesRenderer(BaseRenderer):
    """Lets a view answer with a file's own bytes whatever Accept asks for (the view returns
    them itself); errors are JSON (see `SessionViewSet.finalize_response`)."""

    media_type = "*/*"
    format = "raw"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return json.dumps(data).encode()


def _wants(request, renderer: type) -> bool:
    """Whether content negotiation (Accept, or `?format=`) chose `renderer`'s media type."""
    return isinstance(getattr(request, "accepted_renderer", None), renderer)


class RangeNotSatisfiable(ServiceError):
    status_code = status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE
    code = "range_not_satisfiable"


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The `(start, end)` (end exclusive) a single-range `Range` header asks for, None to send
    the whole file (no header, or a form not served: the header is then ignored, as HTTP
    allows); ServiceError 416 when it lies wholly past the end."""
    match = RANGE.match((header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
        if last != "" and int(last) < start:
            return None
    if start >= size:
        raise RangeNotSatisfiable(f"The range asked for starts past the file's {size} bytes")
    return start, end


# --- Views ---------------------------------------------------------------------------------------

SESSION_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
PID = OpenApiParameter("pid", OpenApiTypes.INT, OpenApiParameter.PATH)
RANGE_HEADER = OpenApiParameter(
    "Range",
    {"type": "string", "pattern": r"^bytes=\d{0,20}-\d{0,20}$", "maxLength": 47},
    OpenApiParameter.HEADER,
    required=False,
    description="One range of bytes (`bytes=0-99`, `bytes=100-`, `bytes=-100`), for raw reads.",
)
STREAM = OpenApiResponse(
    StreamFrameSerializer,
    description="Server-sent events: `event: <kind>`, `data: <JSON>` (see the operation).",
)
# What every operation inside a session may answer besides its own result: a bad request or
# the daemon's refusal (400), no such session, file or process (404), a session that is not
# active (409), a daemon that does not answer (503).
IN_SESSION = (400, 401, 404, 409, 503)


@extend_schema_view(
    list=extend_schema(
        parameters=[SessionFilterSerializer],
        responses={200: SessionSerializer(many=True), **errors(400, 401)},
    ),
    retrieve=extend_schema(
        parameters=[SESSION_ID], responses={200: SessionSerializer, **errors(401, 404)}
    ),
)
class SessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's sessions (an admin sees everyone's), newest first, and what is done inside
    one."""

    serializer_class = SessionSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Session.objects.none()
        sessions = Session.objects.for_user(self.request.user).visible()
        if self.action == "list":
            query = SessionFilterSerializer(data=self.request.query_params)
            query.is_valid(raise_exception=True)
            if query.validated_data.get("status"):
                sessions = sessions.filter(status=query.validated_data["status"])
        return sessions.order_by("-created_at")

    def get_object(self) -> Session:
        return services.access_session(self.request.user, self.kwargs["pk"])

    def get_renderers(self):
        action_name = getattr(self, "action", None)
        if action_name in ("shell", "process_logs"):
            return [JSONRenderer(), EventStreamRenderer()]
        if action_name in ("read_file", "download"):
            return [JSONRenderer(), FileBytesRenderer()]
        return super().get_renderers()

    def finalize_response(self, request, response, *args, **kwargs):
        # Errors are JSON whatever the client asked for (a file's bytes, an event stream).
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
            if response.status_code == status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE:
                response["Content-Range"] = f"bytes */{getattr(self, 'file_size', 0)}"
        return super().finalize_response(request, response, *args, **kwargs)

    def handle_exception(self, exc):
        if isinstance(exc, RequestDataTooBig):
            # Bodies past DATA_UPLOAD_MAX_MEMORY_SIZE: a 413 rather than a 500.
            exc = PayloadTooLarge(
                f"The request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; "
                "send a large file with POST …/files/upload"
            )
        return super().handle_exception(exc)

    def _query(self, serializer_class) -> dict:
        query = serializer_class(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return query.validated_data

    def _body(self, serializer_class) -> dict:
        body = serializer_class(data=self.request.data)
        body.is_valid(raise_exception=True)
        return body.validated_data

    # --- the session ---------------------------------------------------------------------------

    @extend_schema(
        request={"application/json": SessionCreateSerializer},
        responses={201: SessionSerializer, **errors(400, 401, 404, 409, 413)},
    )
    def create(self, request):
        """Start a new session and answer once it is active (or failed, or after 20 s still
        starting). 409 `session_limit` when you have as many running as allowed."""
        data = self._body(SessionCreateSerializer)
        agent = agents.find_agent(request.user, data["agent_id"]) if data.get("agent_id") else None
        session = services.create_session(
            request.user,
            agent=agent,
            workspace_mb=data.get("workspace_mb"),
            idle_timeout_seconds=data.get("idle_timeout_seconds"),
            network=data.get("network"),
        )
        session = services.wait_until_started(session)
        return Response(self.get_serializer(session).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[SESSION_ID],
        responses={
            204: OpenApiResponse(description="Deleted: no process, workspace or record is left."),
            202: OpenApiResponse(
                SessionSerializer, description="Gone for you already; its host is still at it."
            ),
            **errors(401, 404),
        },
    )
    def destroy(self, request, pk=None):
        """Delete the session: every process in it is killed and its workspace removed."""
        session = self.get_object()
        if services.delete_session(session):
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(self.get_serializer(session).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[SESSION_ID],
        request=None,
        responses={200: SessionSerializer, **errors(401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        """Stop the sandbox (every process in it ends); the workspace is kept for a later
        start. Answers once it has stopped (or after 20 s, still stopping)."""
        session = services.stop_session(self.get_object())
        return Response(self.get_serializer(session).data)

    @extend_schema(
        parameters=[SESSION_ID],
        request=None,
        responses={200: SessionSerializer, **errors(401, 404, 409, 503)},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Freeze every process in the sandbox (its running tasks are paused first); nothing
        can be done in the session until it is resumed, and it stops after its idle timeout
        from the pause. Answers once it is paused."""
        session = services.pause_session(self.get_object())
        return Response(self.get_serializer(session).data)

    @extend_schema(
        parameters=[SESSION_ID],
        request=None,
        responses={200: SessionSerializer, **errors(401, 404, 409, 503)},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Thaw a paused session (and resume its paused tasks); answers once it is active."""
        session = services.resume_session(self.get_object())
        return Response(self.get_serializer(session).data)

    @extend_schema(
        parameters=[SESSION_ID],
        request=None,
        responses={200: SessionSerializer, **errors(401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        """Start a stopped or failed session again, with its workspace as it was; answers once
        it is active (or failed, or after 20 s still starting)."""
        session = services.start_session(self.get_object())
        session = services.wait_until_started(session)
        return Response(self.get_serializer(session).data)

    # --- files ---------------------------------------------------------------------------------

    @extend_schema(
        parameters=[SESSION_ID, PathQuerySerializer],
        responses={200: FileListSerializer, **errors(*IN_SESSION)},
    )
    @action(detail=True, methods=["get"], url_path="files", pagination_class=None)
    def list_files(self, request, pk=None):
        """The entries of a folder of the workspace (symbolic links are listed, never
        followed), sorted by name."""
        session = self.get_object()
        path = self._query(PathQuerySerializer)["path"]
        listing = operations.list_files(session, path)
        return Response(FileListSerializer({"path": path, **listing}).data)

    @extend_schema(
        parameters=[SESSION_ID, DeleteQuerySerializer],
        responses={204: OpenApiResponse(description="Deleted."), **errors(*IN_SESSION)},
    )
    @list_files.mapping.delete
    def delete_file(self, request, pk=None):
        """Delete a file, a symbolic link (never what it points to) or, with `recursive`, a
        folder."""
        session = self.get_object()
        query = self._query(DeleteQuerySerializer)
        if query["path"].strip("/") in ("", "."):
            raise ServiceError.invalid(
                "path", "The workspace root cannot be deleted.", code="invalid_path"
            )
        operations.delete_file(session, query["path"], recursive=query["recursive"])
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[SESSION_ID, ReadQuerySerializer, RANGE_HEADER],
        responses={
            (200, "application/json"): FileContentSerializer,
            (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The raw bytes."),
            (206, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The range asked."),
            **errors(*IN_SESSION, 416),
        },
    )
    @action(detail=True, methods=["get"], url_path="files/content", pagination_class=None)
    def read_file(self, request, pk=None):
        """Read a file: JSON with its text (or base64 when it is not UTF-8), `offset` and
        `length` choosing the part; with `raw=1` or an Accept without JSON, its bytes with
        their content type (a `Range` header chooses the part)."""
        session = self.get_object()
        query = self._query(ReadQuerySerializer)
        if query["raw"] or _wants(request, FileBytesRenderer):
            return self._raw(session, query["path"], attachment=False)
        read = operations.read_file(
            session, query["path"], offset=query["offset"], length=query.get("length")
        )
        data = read.pop("data")
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode("ascii"), "base64"
        return Response(
            FileContentSerializer({**read, "content": content, "encoding": encoding}).data
        )

    @extend_schema(
        parameters=[SESSION_ID],
        request={"application/json": FileWriteSerializer},
        responses={200: FileWrittenSerializer, **errors(*IN_SESSION, 413)},
    )
    @read_file.mapping.post
    def write_file(self, request, pk=None):
        """Write a whole file (its folders are made; an existing file is replaced at once)."""
        session = self.get_object()
        data = self._body(FileWriteSerializer)
        written = operations.write_file(session, data["path"], data["data"])
        return Response(FileWrittenSerializer({"path": data["path"], **written}).data)

    @extend_schema(
        parameters=[SESSION_ID],
        request={"multipart/form-data": FileUploadSerializer},
        responses={201: FileWrittenSerializer, **errors(*IN_SESSION, 413)},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="files/upload",
        parser_classes=[MultiPartParser, FormParser],
    )
    def upload(self, request, pk=None):
        """Upload a file (multipart `file`) to `path`."""
        session = self.get_object()
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # The multipart envelope adds a little on top of the file itself.
        if length - 64 * 1024 > UPLOAD_MAX_BYTES:
            raise PayloadTooLarge(f"Uploads are limited to {UPLOAD_MAX_BYTES} bytes")
        data = self._body(FileUploadSerializer)
        upload = data["file"]
        if upload.size > UPLOAD_MAX_BYTES:
            raise PayloadTooLarge(f"Uploads are limited to {UPLOAD_MAX_BYTES} bytes")
        path = data.get("path") or upload.name
        written = operations.write_file(session, path, upload.read())
        return Response(
            FileWrittenSerializer({"path": path, **written}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        parameters=[SESSION_ID, PathQuerySerializer, RANGE_HEADER],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiTypes.BINARY,
            **errors(*IN_SESSION, 416),
        },
    )
    @action(detail=True, methods=["get"], url_path="files/download", pagination_class=None)
    def download(self, request, pk=None):
        """Download a file, as an attachment (a `Range` header chooses a part)."""
        session = self.get_object()
        return self._raw(session, self._query(PathQuerySerializer)["path"], attachment=True)

    def _raw(self, session: Session, path: str, *, attachment: bool):
        info = operations.stat_file(session, path)
        if info.get("type") != "file":
            raise ServiceError(f"{path or '.'} is not a regular file", code="not_a_file")
        size = int(info.get("size", 0))
        self.file_size = size
        span = byte_range(self.request.headers.get("Range"), size)
        start, end = span or (0, size)
        name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
        if attachment:
            content_type = "application/octet-stream"
        else:
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = streams.bytes_response(
            operations.read_chunks(session, path, start, end),
            content_type=content_type,
            status=status.HTTP_206_PARTIAL_CONTENT if span else status.HTTP_200_OK,
        )
        response["Content-Length"] = str(end - start)
        response["Accept-Ranges"] = "bytes"
        if span:
            response["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response["Content-Disposition"] = content_disposition_header(attachment, name)
        # The workspace's files are the session's own: never run as this site's pages.
        response["Content-Security-Policy"] = "sandbox; default-src 'none'"
        return response

    # --- search --------------------------------------------------------------------------------

    @extend_schema(
        parameters=[SESSION_ID],
        request={"application/json": GlobSerializer},
        responses={200: GlobResultSerializer, **errors(*IN_SESSION, 413)},
    )
    @action(detail=True, methods=["post"], url_path="search/files")
    def search_files(self, request, pk=None):
        """Paths matching a pattern (`**` for any depth), symbolic links never followed."""
        session = self.get_object()
        data = self._body(GlobSerializer)
        found = operations.find_files(session, data["pattern"], data["path"], limit=data["limit"])
        return Response(GlobResultSerializer(found).data)

    @extend_schema(
        parameters=[SESSION_ID],
        request={"application/json": GrepSerializer},
        responses={200: GrepResultSerializer, **errors(*IN_SESSION, 413)},
    )
    @action(detail=True, methods=["post"], url_path="search/grep")
    def search_grep(self, request, pk=None):
        """Lines matching a regular expression, in the files under `path` (binary files
        skipped; bounded in matches and time)."""
        session = self.get_object()
        data = self._body(GrepSerializer)
        found = operations.grep(
            session,
            data["pattern"],
            data["path"],
            glob=data.get("glob"),
            ignore_case=data["ignore_case"],
            max_matches=data["max_matches"],
        )
        return Response(GrepResultSerializer(found).data)

    # --- shell ---------------------------------------------------------------------------------

    @extend_schema(
        parameters=[SESSION_ID],
        request={"application/json": ShellSerializer},
        responses={
            (200, "application/json"): ShellResultSerializer,
            (200, SSE): OpenApiResponse(
                StreamFrameSerializer,
                description="`stdout` and `stderr` events `{data}` as the output comes, then "
                "`exit` `{exit_code, timed_out, truncated}` (or `error` `{detail, code}`).",
            ),
            **errors(*IN_SESSION, 413),
        },
    )
    @action(detail=True, methods=["post"])
    def shell(self, request, pk=None):
        """Run a shell command (`/bin/sh -c`) in the workspace: its output once it has ended,
        or as it comes (`stream`, or `Accept: text/event-stream`)."""
        session = self.get_object()
        data = self._body(ShellSerializer)
        stream = data["stream"]
        if stream is None:
            stream = _wants(request, EventStreamRenderer)
        if stream:
            events = operations.shell_stream(
                session, data["command"], timeout=data["timeout"], cwd=data["cwd"]
            )
            return streams.sse_response(events)
        result = operations.shell(
            session, data["command"], timeout=data["timeout"], cwd=data["cwd"]
        )
        return Response(ShellResultSerializer(result).data)

    # --- processes -----------------------------------------------------------------------------

    @extend_schema(
        parameters=[SESSION_ID],
        responses={200: ProcessSerializer(many=True), **errors(*IN_SESSION)},
    )
    @action(detail=True, methods=["get"], url_path="processes", pagination_class=None)
    def processes(self, request, pk=None):
        """Background processes started in the session, running or ended."""
        session = self.get_object()
        entries = operations.processes(session)
        return Response(ProcessSerializer(entries, many=True).data)

    @extend_schema(
        parameters=[SESSION_ID],
        request={"application/json": ProcessStartSerializer},
        responses={201: ProcessSerializer, **errors(*IN_SESSION, 413)},
    )
    @processes.mapping.post
    def start_process(self, request, pk=None):
        """Start a background process (`/bin/sh -c command`); its output goes to its log."""
        session = self.get_object()
        data = self._body(ProcessStartSerializer)
        entry = operations.start_process(
            session, data["command"], cwd=data["cwd"], name=data.get("name")
        )
        return Response(ProcessSerializer(entry).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[SESSION_ID, PID],
        request=None,
        responses={200: ProcessSerializer, **errors(*IN_SESSION)},
    )
    @action(detail=True, methods=["post"], url_path=r"processes/(?P<pid>[0-9]+)/stop")
    def stop_process(self, request, pk=None, pid=None):
        """Stop a process and every process it started (SIGTERM, then SIGKILL after 5 s)."""
        session = self.get_object()
        entry = operations.stop_process(session, int(pid))
        return Response(ProcessSerializer(entry).data)

    @extend_schema(
        parameters=[SESSION_ID, PID, LogsQuerySerializer],
        responses={
            (200, "application/json"): LogsSerializer,
            (200, SSE): OpenApiResponse(
                StreamFrameSerializer,
                description="`log` events `{data}` (the last `tail` lines, then what it "
                "writes) until it exits, then `end` with the process (or `error`).",
            ),
            **errors(*IN_SESSION),
        },
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"processes/(?P<pid>[0-9]+)/logs",
        pagination_class=None,
    )
    def process_logs(self, request, pk=None, pid=None):
        """A process's last lines of output; with `follow=true` (or `Accept:
        text/event-stream`), then what it writes as it comes, until it exits."""
        session = self.get_object()
        query = self._query(LogsQuerySerializer)
        if query["follow"] or _wants(request, EventStreamRenderer):
            return streams.sse_response(
                operations.follow_logs(session, int(pid), tail=query["tail"])
            )
        lines = operations.process_logs(session, int(pid), tail=query["tail"])
        return Response(LogsSerializer({"pid": int(pid), "lines": lines}).data)
