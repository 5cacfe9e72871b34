"""AIMOS settings, configured from the environment (and `.env` when present).

Every variable is documented in `.env.example` and the README. A bad value stops the
server at start with a message naming the variable (see `core.config`).
"""

import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from aimos import __version__
from core import config as env

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)


def _private_dir(path: Path) -> Path:
    """`path` exists and only its owner may enter it (0700): created so, or tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def _private_file(path: Path) -> Path:
    """`path` exists and only its owner may read it (0600): created empty with that mode (no
    moment with a looser one), or an existing file tightened."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    return path


# Secrets, the SQLite database, artifacts and the embedded Redis's socket live here: nobody but
# the server's own user enters it. (The process sandbox reads what runs need through binds made
# by root, so runs do not need to.)
VAR_DIR = _private_dir(Path(env.string("AIMOS_VAR_DIR", str(BASE_DIR / "var"))).resolve())

AIMOS_VERSION = __version__
AIMOS_ENVIRONMENT = env.string("AIMOS_ENVIRONMENT", "development")

DEBUG = env.boolean("DEBUG", False)


def _local_secret_key() -> str:
    """A key generated once into var/ so local runs keep their sessions across restarts.

    The file appears whole and 0600 at once (written aside, then linked into place), so
    processes starting together all read the same complete key; a looser one is tightened."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd, draft = tempfile.mkstemp(dir=VAR_DIR, prefix=".secret_key-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(50))
            os.link(draft, path)
        except FileExistsError:
            pass  # another process got there first: its key is the key
        finally:
            os.unlink(draft)
    return _private_file(path).read_text().strip()


SECRET_KEY = env.string("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off (for a local run or a manage.py command "
            "on a checkout, DEBUG=1 uses a key kept in var/)"
        )
    SECRET_KEY = _local_secret_key()

ALLOWED_HOSTS = env.csv("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env.csv("CSRF_TRUSTED_ORIGINS")
# Under /api/ a CSRF refusal is JSON like every other answer there.
CSRF_FAILURE_VIEW = "core.errors.csrf_failure"
CORS_ALLOWED_ORIGINS = env.csv("CORS_ORIGINS")
CORS_EXPOSE_HEADERS = [
    "X-Total-Count",
    "Link",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "X-Request-ID",
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "channels",
    "aimos",
    "accounts",
    "notifications",
    "agents",
    "executions",
    "workspaces",
]

MIDDLEWARE = [
    # Outermost: times the whole request and puts X-Request-ID on every response.
    "aimos.request_log.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.errors.ApiErrorMiddleware",
    "accounts.throttles.RateLimitHeadersMiddleware",
]

ROOT_URLCONF = "aimos.urls"
WSGI_APPLICATION = "aimos.wsgi.application"
ASGI_APPLICATION = "aimos.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

try:
    DATABASES = {
        "default": dj_database_url.parse(
            env.string("DATABASE_URL", f"sqlite:///{VAR_DIR / 'aimos.sqlite3'}"),
            conn_max_age=env.integer("DATABASE_CONN_MAX_AGE", 0, minimum=0),
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if (
    DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    and env.string("AIMOS_PROCESS") == "web"
    and not DATABASES["default"]["CONN_MAX_AGE"]
):
    # A web server (aimos/asgi.py says it is one) shares a pool of connections between its
    # requests: a request in flight borrows one, waiting up to DATABASE_POOL_TIMEOUT for a free
    # one (then 503), so a burst of requests cannot exhaust the server's `max_connections`.
    # Workers keep a connection per thread: they fork, and a pool does not survive a fork.
    # A pooled connection is checked as it is lent, so one the server ended (a restart, a
    # terminated backend) is replaced instead of failing the request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.integer("DATABASE_POOL_SIZE", 16, minimum=1),
        "timeout": env.number("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and workers write concurrently: wait for the lock instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    # A file, not memory, so that workers started by the tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        # Created 0600 before SQLite opens it (an empty file is an empty database); SQLite
        # gives its journal and WAL files the database file's mode.
        _private_file(Path(DATABASES["default"]["NAME"]))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Redis: queues, channel layer, cache ---------------------------------------------------

EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis.sock"
EMBEDDED_REDIS = not env.string("REDIS_URL")
REDIS_URL = env.string("REDIS_URL") or f"unix://{EMBEDDED_REDIS_SOCKET}"
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(
        f"REDIS_URL must start with redis://, rediss:// or unix://, got {REDIS_URL!r}"
    )

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "aimos",
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# Jobs are stored as JSON, never as pickles: whoever can write to Redis must not get code run by
# unpickling. Queues (enqueue, the admin) read SERIALIZER; every worker that manage.py starts is
# aimos.jobs.JSONWorker, which reads JSON whatever `--serializer` says (its default is pickle).
RQ_QUEUES = {
    name: {
        "URL": REDIS_URL,
        "DEFAULT_TIMEOUT": env.integer("AIMOS_JOB_TIMEOUT", 3600, minimum=1),
        "SERIALIZER": "rq.serializers.JSONSerializer",
    }
    for name in ("builds", "runs", "default")
}
RQ = {"WORKER_CLASS": "aimos.jobs.JSONWorker"}
# Workers of the `builds` and `default` queues (a process forked per job).
AIMOS_WORKERS = env.integer("AIMOS_WORKERS", 4, minimum=1)
# Workers of the `runs` queue (aimos.jobs.RunWorker), each supervising many runs at once in
# threads, and how many; their database connections (shared by all their runs); and how
# long one that is asked to stop waits for its runs to end.
AIMOS_RUN_WORKERS = env.integer("AIMOS_RUN_WORKERS", min(4, os.cpu_count() or 1), minimum=1)
AIMOS_RUNS_PER_WORKER = env.integer(
    "AIMOS_RUNS_PER_WORKER", min(128, 32 * (os.cpu_count() or 1)), minimum=1
)
AIMOS_RUN_DB_CONNECTIONS = env.integer("AIMOS_RUN_DB_CONNECTIONS", 4, minimum=1)
AIMOS_RUN_WORKER_GRACE_SECONDS = env.number("AIMOS_RUN_WORKER_GRACE_SECONDS", 10.0, minimum=0)
# Warm sandboxes a run worker keeps started ahead, per version in use (0: every run starts
# cold) and in all, and how long a version's stay after its last run.
AIMOS_WARM_SANDBOXES = env.integer("AIMOS_WARM_SANDBOXES", 2, minimum=0)
AIMOS_WARM_SANDBOXES_TOTAL = env.integer("AIMOS_WARM_SANDBOXES_TOTAL", 8, minimum=0)
AIMOS_WARM_IDLE_SECONDS = env.number("AIMOS_WARM_IDLE_SECONDS", 300.0, minimum=1)
# A version whose manifest says `reuse: true` may have one sandbox serve this many runs of one
# owner, one at a time (0: never reuse), and a reused sandbox is given back after this long
# without a run.
AIMOS_REUSE_MAX_RUNS = env.integer("AIMOS_REUSE_MAX_RUNS", 100, minimum=0)
AIMOS_REUSE_IDLE_SECONDS = env.number("AIMOS_REUSE_IDLE_SECONDS", 60.0, minimum=1)

# --- Authentication --------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

ACCESS_TOKEN_EXPIRE_MINUTES = env.integer("ACCESS_TOKEN_EXPIRE_MINUTES", 30, minimum=1)
REFRESH_TOKEN_EXPIRE_DAYS = env.integer("REFRESH_TOKEN_EXPIRE_DAYS", 7, minimum=1)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=ACCESS_TOKEN_EXPIRE_MINUTES),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=REFRESH_TOKEN_EXPIRE_DAYS),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": SECRET_KEY,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}

# --- REST API ----------------------------------------------------------------------------

THROTTLE_RATES = {
    "user": env.rate("THROTTLE_USER_RATE", "100/min"),
    "admin": env.rate("THROTTLE_ADMIN_RATE", "200/min"),
    "anon": env.rate("THROTTLE_ANON_RATE", "60/min"),
    "auth": env.rate("THROTTLE_AUTH_RATE", "20/min"),
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.BearerTokenAuthentication",
        "accounts.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "accounts.throttles.UserRateThrottle",
        "accounts.throttles.AnonRateThrottle",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.LimitSkipPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Proxies in front of AIMOS whose X-Forwarded-For is trusted for per-IP throttles. With
    # DRF's default (None) a client could send its own X-Forwarded-For to dodge them.
    "NUM_PROXIES": env.integer("NUM_PROXIES", 0, minimum=0),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "AIMOS API",
    "DESCRIPTION": "Deploy, version, run and watch AI agents.",
    "VERSION": __version__,
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "PREPROCESSING_HOOKS": ["aimos.schema.only_canonical_paths"],
    # Several models have a `status`: each choice set gets its own component name.
    "ENUM_NAME_OVERRIDES": {
        "AgentStatusEnum": "agents.choices.AgentStatus",
        "VersionStatusEnum": "agents.choices.VersionStatus",
        "ExecutionStatusEnum": "executions.choices.ExecutionStatus",
        "SessionStatusEnum": "workspaces.choices.SessionStatus",
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Internationalisation, static files -------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = VAR_DIR / "media"

# The dashboard's own login (the admin keeps /admin/login/).
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

# --- Security (production-like unless DEBUG) ---------------------------------------------------

SESSION_COOKIE_SECURE = env.boolean("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env.boolean("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env.boolean("SECURE_HSTS_PRELOAD", False)
if env.boolean("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.string("LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.request": {"level": "ERROR"}},
}

# --- Sandbox -----------------------------------------------------------------------------------

AIMOS_SANDBOX = env.choice("AIMOS_SANDBOX", "process", ("process", "docker"))
AIMOS_SANDBOX_ROOT = Path(env.string("AIMOS_SANDBOX_ROOT", str(VAR_DIR / "sandbox"))).resolve()
AIMOS_SANDBOX_ALLOW_UNISOLATED = env.boolean("AIMOS_SANDBOX_ALLOW_UNISOLATED", False)
# Process sandbox: runs get uids from here on (1000 of them), used by no user or subuid range.
AIMOS_SANDBOX_UID_BASE = env.integer("AIMOS_SANDBOX_UID_BASE", 200_000, minimum=1000)
AIMOS_SANDBOX_ALLOW_NETWORK = env.boolean("AIMOS_SANDBOX_ALLOW_NETWORK", False)
AIMOS_DOCKER_BASE_IMAGE = env.string("AIMOS_DOCKER_BASE_IMAGE", "aimos-python:3.11")
AIMOS_MAX_OUTPUT_BYTES = env.integer("AIMOS_MAX_OUTPUT_BYTES", 10 * 1024 * 1024, minimum=1024)
AIMOS_MAX_TIMEOUT_SECONDS = env.integer("AIMOS_MAX_TIMEOUT_SECONDS", 3600, minimum=1)
AIMOS_MAX_MEMORY_MB = env.integer("AIMOS_MAX_MEMORY_MB", 2048, minimum=16)
AIMOS_MAX_CPUS = env.number("AIMOS_MAX_CPUS", 2.0, minimum=0.01)
AIMOS_MAX_PIDS = env.integer("AIMOS_MAX_PIDS", 256, minimum=8)
AIMOS_MAX_FILE_MB = env.integer("AIMOS_MAX_FILE_MB", 64, minimum=1)
AIMOS_MAX_OPEN_FILES = env.integer("AIMOS_MAX_OPEN_FILES", 256, minimum=16)
# What a run may write to its workspace and /tmp together (one size-capped filesystem).
AIMOS_SANDBOX_WORKSPACE_MB = env.integer("AIMOS_SANDBOX_WORKSPACE_MB", 256, minimum=1)
# Docker backend. The base image is built offline by `manage.py build_base_image` (debootstrap
# from the Debian mirror, no registry); with a registry, `python:3.11-slim` works as well.
AIMOS_DOCKER_AGENT_IMAGE = env.string("AIMOS_DOCKER_AGENT_IMAGE", "aimos-agent")
AIMOS_DOCKER_DEBIAN_MIRROR = env.string(
    "AIMOS_DOCKER_DEBIAN_MIRROR", "http://deb.debian.org/debian"
)
# Builds: pip installs from this index, reaching only these hosts (through the sandbox's egress
# proxy; empty = the index's host, plus files.pythonhosted.org for PyPI), wheels only unless
# source builds are allowed, and an environment may not grow past AIMOS_BUILD_MAX_MB.
AIMOS_BUILD_INDEX_URL = env.string("AIMOS_BUILD_INDEX_URL", "https://pypi.org/simple")
AIMOS_BUILD_INDEX_HOSTS = env.csv("AIMOS_BUILD_INDEX_HOSTS")
AIMOS_BUILD_ALLOW_SOURCE = env.boolean("AIMOS_BUILD_ALLOW_SOURCE", False)
AIMOS_BUILD_MAX_MB = env.integer("AIMOS_BUILD_MAX_MB", 2048, minimum=16)

# --- Agents: uploads and builds -------------------------------------------------------------------

AIMOS_UPLOAD_MAX_BYTES = env.integer("AIMOS_UPLOAD_MAX_BYTES", 100 * 1024 * 1024, minimum=1024)
AIMOS_ARCHIVE_MAX_UNPACKED_BYTES = env.integer(
    "AIMOS_ARCHIVE_MAX_UNPACKED_BYTES", 512 * 1024 * 1024, minimum=1024
)
AIMOS_ARCHIVE_MAX_MEMBERS = env.integer("AIMOS_ARCHIVE_MAX_MEMBERS", 10_000, minimum=1)
AIMOS_ARCHIVE_MAX_DEPTH = env.integer("AIMOS_ARCHIVE_MAX_DEPTH", 32, minimum=1)
AIMOS_ARTIFACT_ROOT = Path(env.string("AIMOS_ARTIFACT_ROOT", str(VAR_DIR / "artifacts"))).resolve()
# Django refuses bodies over this before a view reads them; uploads stream to disk past 2.5 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Longest a build (requirements install and entrypoint check) may take before it is failed.
AIMOS_BUILD_TIMEOUT = env.integer("AIMOS_BUILD_TIMEOUT", 900, minimum=10)
# Seconds between two upkeep passes (stale builds, lost runs).
AIMOS_MAINTENANCE_INTERVAL = env.integer("AIMOS_MAINTENANCE_INTERVAL", 30, minimum=1)

# --- Executions -----------------------------------------------------------------------------------

# A worker renews its lease on a run every few seconds; a run whose lease expired lost its worker.
# The same for a session host and its sessions.
AIMOS_RUN_LEASE_SECONDS = env.integer("AIMOS_RUN_LEASE_SECONDS", 15, minimum=3)
# A run paused longer than this ends timed_out.
AIMOS_MAX_PAUSE_SECONDS = env.integer("AIMOS_MAX_PAUSE_SECONDS", 3600, minimum=1)
# Longest `wait` an execute request may ask for, in seconds.
AIMOS_MAX_WAIT_SECONDS = env.integer("AIMOS_MAX_WAIT_SECONDS", 300, minimum=0)
# Seconds between two SSE heartbeat comments while a stream is idle.
AIMOS_SSE_HEARTBEAT_SECONDS = env.number("AIMOS_SSE_HEARTBEAT_SECONDS", 15.0, minimum=0.1)
# Seconds between two `metrics_update` messages of the user feed (sent by the upkeep process,
# so at most every AIMOS_MAINTENANCE_INTERVAL seconds as well).
AIMOS_METRICS_INTERVAL = env.integer("AIMOS_METRICS_INTERVAL", 60, minimum=1)

# --- Sessions (workspaces) -----------------------------------------------------------------------

# Where sessions' workspaces (a disk image each, mounted while the session's sandbox runs) and
# the sockets of their daemons live: on the machine of the session host (`manage.py
# sessionhost`), where the web processes and the upkeep reach them too.
AIMOS_SESSION_ROOT = Path(env.string("AIMOS_SESSION_ROOT", str(VAR_DIR / "sessions"))).resolve()
# A session unused for this long is stopped (its workspace kept); each may ask for its own.
AIMOS_SESSION_IDLE_SECONDS = env.integer("AIMOS_SESSION_IDLE_SECONDS", 1800, minimum=1)
# The workspace of a session stopped for this long is deleted (the session's record stays).
AIMOS_SESSION_RETENTION_HOURS = env.integer("AIMOS_SESSION_RETENTION_HOURS", 168, minimum=1)
# Sessions one user may have starting or running at once (0: none).
AIMOS_SESSION_MAX_ACTIVE_PER_USER = env.integer("AIMOS_SESSION_MAX_ACTIVE_PER_USER", 3, minimum=0)
# A session's workspace size when it does not ask for one, and the most it may ask for (MB).
AIMOS_SESSION_WORKSPACE_MB = env.integer("AIMOS_SESSION_WORKSPACE_MB", 256, minimum=16)
AIMOS_SESSION_MAX_WORKSPACE_MB = env.integer("AIMOS_SESSION_MAX_WORKSPACE_MB", 1024, minimum=16)
if AIMOS_SESSION_WORKSPACE_MB > AIMOS_SESSION_MAX_WORKSPACE_MB:
    raise ImproperlyConfigured(
        f"AIMOS_SESSION_WORKSPACE_MB ({AIMOS_SESSION_WORKSPACE_MB}) must not exceed "
        f"AIMOS_SESSION_MAX_WORKSPACE_MB ({AIMOS_SESSION_MAX_WORKSPACE_MB})"
    )

# --- System: status, metrics samples, Prometheus ------------------------------------------------

# When set, GET /metrics wants `Authorization: Bearer <token>` (the /api/v1 path always wants
# the usual API credentials).
AIMOS_METRICS_TOKEN = env.string("AIMOS_METRICS_TOKEN")
# How long host metrics samples are kept, in hours.
AIMOS_METRICS_RETENTION_HOURS = env.integer("AIMOS_METRICS_RETENTION_HOURS", 168, minimum=1)
# Seconds between two samples (taken by the upkeep process, so at most every
# AIMOS_MAINTENANCE_INTERVAL seconds as well).
AIMOS_METRICS_SAMPLE_SECONDS = env.integer("AIMOS_METRICS_SAMPLE_SECONDS", 60, minimum=1)

# --- Webhooks -------------------------------------------------------------------------------------

# Deliver to loopback/private addresses (local development and tests with a local receiver only).
AIMOS_WEBHOOK_ALLOW_PRIVATE = env.boolean("AIMOS_WEBHOOK_ALLOW_PRIVATE", False)
# Seconds to wait before each retry of a failed delivery (comma-separated; their count = retries).
AIMOS_WEBHOOK_RETRY_DELAYS = env.integers("AIMOS_WEBHOOK_RETRY_DELAYS", "10,60,300,1800,7200")
AIMOS_WEBHOOK_TIMEOUT_SECONDS = env.number("AIMOS_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
