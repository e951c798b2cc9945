"""Flowsite settings, read once from the environment.

With nothing set, Flowsite runs in *embedded* mode: SQLite (WAL, IMMEDIATE
transactions) and a file-backed Celery broker under ``FLOWSITE_DATA_DIR``, with
the worker running inside the server process. Setting ``DATABASE_URL`` and
``REDIS_URL`` switches to *service* mode: PostgreSQL, Redis as broker and result
backend, and separate ``celery -A flowsite worker`` processes.

Every variable is listed in the README and in ``.env.example``.
"""

from __future__ import annotations

import os
import secrets
import warnings
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import environ
from django.core.exceptions import ImproperlyConfigured

from jobs.vocabulary import DEFAULT_QUEUES, LEGACY_QUEUES, RESERVED_QUEUES

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if os.environ.get("FLOWSITE_READ_DOT_ENV_FILE", "") == "True":
    env.read_env(str(BASE_DIR / ".env"))


def env_bool(name: str, default: bool) -> bool:
    """Parse a boolean strictly: ``True``/``False`` (or 1/0), anything else is an error."""
    raw = env.str(name, default="")
    if raw == "":
        return default
    if raw in ("True", "true", "1"):
        return True
    if raw in ("False", "false", "0"):
        return False
    raise ImproperlyConfigured(f"{name} must be True or False, got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """Parse an integer strictly, refusing junk and values below ``minimum``."""
    raw = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_secret(name: str) -> str:
    """Read a secret from ``NAME`` or from the file named by ``NAME_FILE``."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        return Path(path).read_text().strip()
    return env.str(name, default="")


# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
DATA_DIR = Path(env.str("FLOWSITE_DATA_DIR", default=str(BASE_DIR / "var")))
DATABASE_URL = env.str("DATABASE_URL", default="")
REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED = not REDIS_URL  # the broker lives on disk and the worker runs in-process
# Web server processes started by ``manage.py up`` in service mode. Each process
# serves requests concurrently in threads, but runs Python on one core at a time.
# Embedded mode always serves from one process: the one that also runs the worker.
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 2 * (os.cpu_count() or 1), minimum=1)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "insecure-development-key-do-not-use-in-production"
    elif not DATABASE_URL:
        # Embedded mode must just work: keep a generated key beside the database.
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file = DATA_DIR / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        SECRET_KEY = key_file.read_text().strip()
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when DATABASE_URL is set and DEBUG is off."
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
TIME_ZONE = "UTC"
USE_TZ = True
LANGUAGE_CODE = "en-us"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# APPS
# ------------------------------------------------------------------------------
INSTALLED_APPS = [
    "flowsite.admin.FlowsiteAdminConfig",  # django.contrib.admin with the console's dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "jobs",
    "flows",
    "webhooks",
]
# The example handlers (examples/handlers.py) sleep on request: opt-in outside the
# embedded mode, so that a service's workers run only the handlers it means to offer.
FLOWSITE_EXAMPLES = env_bool("FLOWSITE_EXAMPLES", EMBEDDED)
if FLOWSITE_EXAMPLES:
    INSTALLED_APPS.append("examples")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Cache-Control: no-store on every /api/ response (job data, tokens).
    "flowsite.middleware.NoStoreAPIMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "flowsite.urls"
WSGI_APPLICATION = "flowsite.wsgi.application"
ASGI_APPLICATION = "flowsite.asgi.application"

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

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# WhiteNoise serves files with synchronous iterators, which Django's ASGI handler
# accepts (with this warning) by buffering them: harmless for the admin's assets.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve the admin's assets straight from the installed apps: no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# DATABASES
# ------------------------------------------------------------------------------
if DATABASE_URL:
    DATABASES = {"default": env.db_url("DATABASE_URL")}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("FLOWSITE_DB_POOL", True):
        # Under ASGI every request may run on a new thread, so per-thread persistent
        # connections are not reused; a psycopg pool is (and it is fork-safe in workers).
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("FLOWSITE_DB_POOL_SIZE", 10, minimum=1),
        }
        DATABASES["default"]["CONN_MAX_AGE"] = 0
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 60)
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("FLOWSITE_DB_PREPARE", True):
        # The engine's per-job statements (flowsite.db.prepared_cursor) are prepared on
        # first use; the ORM's client-side-binding cursors never prepare anything.
        # Turn off behind a pooler that cannot keep prepared statements (PgBouncer in
        # transaction mode before 1.21).
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 0
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "flowsite.sqlite3"),
            "OPTIONS": {
                # Writers queue for the lock instead of failing at once.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=NORMAL;"
                    "PRAGMA busy_timeout=30000;"
                ),
            },
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# SECURITY
# ------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("FLOWSITE_MAX_BODY_BYTES", 2_621_440, minimum=1024)

# CELERY
# ------------------------------------------------------------------------------
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message per worker process at a time: long jobs never wait behind a busy process.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, minimum=1)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 7 * 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every database connection around every task unless
# this is set; reusing them saves a new connection (~9 ms on PostgreSQL) per job.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=1)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if EMBEDDED:
    BROKER_DIR = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "flowsitefs://localhost//"  # see flowsite/broker.py
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.005,
    }
    CELERY_RESULT_BACKEND = None
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
else:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # An unacknowledged message comes back after this long. A job whose run is alive
        # ignores it (jobs.liveness); runs of a dead worker are found sooner by the sweep.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 12 * 3600, minimum=1),
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
    }
    if CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] < 600:
        # kombu looks for overdue messages about every 100 s (10 s x 10): with a short
        # visibility timeout, look every second.
        CELERY_BROKER_TRANSPORT_OPTIONS.update(unacked_restore_interval=1, unacked_restore_throttle=1)

# CACHE
# ------------------------------------------------------------------------------
# Shared by every web process (throttling counts requests across all of them), in Redis
# in service mode; embedded mode serves from one process, so memory is enough.
if not EMBEDDED:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "flowsite",
        }
    }

# CHANNELS
# ------------------------------------------------------------------------------
# Live events (flows/events.py). Service mode: channels-redis's pub/sub layer (decoding
# each message once per process, flowsite/layers.py), so
# every web process hears the groups its consumers joined, and workers publish with
# a plain Redis PUBLISH. The prefix carries the Redis database number: pub/sub
# channels are shared by all databases of a Redis server.
if EMBEDDED:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "flowsite.layers.DecodeOnceRedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": f"flowsite{urlparse(REDIS_URL).path.strip('/') or '0'}",
            },
        }
    }

# FLOWSITE
# ------------------------------------------------------------------------------
# Queues a job may be sent to; workers consume them with ``-Q``. The default includes
# the legacy service's queue names (jobs/vocabulary.py).
FLOWSITE_QUEUES = env.list("FLOWSITE_QUEUES", default=[*DEFAULT_QUEUES, *LEGACY_QUEUES])
# External queues: their jobs run outside Flowsite. Any job name is accepted on them,
# nothing is published to Celery, and their state changes only through reports
# (PUT /api/flows/{flowId}/jobs/{jobId}, PUT /api/jobs/{queueName}/{jobId}). A run
# claimed by a report and not reported on for EXTERNAL_STALLED_AFTER seconds is lost.
FLOWSITE_EXTERNAL_QUEUES = env.list("FLOWSITE_EXTERNAL_QUEUES", default=[])
FLOWSITE_EXTERNAL_STALLED_AFTER = env_int("FLOWSITE_EXTERNAL_STALLED_AFTER", 3600, minimum=1)
if set(FLOWSITE_QUEUES) & set(FLOWSITE_EXTERNAL_QUEUES):
    raise ImproperlyConfigured(
        "FLOWSITE_QUEUES and FLOWSITE_EXTERNAL_QUEUES overlap: "
        f"{', '.join(sorted(set(FLOWSITE_QUEUES) & set(FLOWSITE_EXTERNAL_QUEUES)))}. "
        "A queue is worked by Flowsite's workers or by an external system, not both."
    )
if reserved := sorted((set(FLOWSITE_QUEUES) | set(FLOWSITE_EXTERNAL_QUEUES)) & RESERVED_QUEUES):
    raise ImproperlyConfigured(
        f"Queue name(s) {', '.join(reserved)} are reserved (webhook deliveries, the sweeps): "
        "FLOWSITE_QUEUES and FLOWSITE_EXTERNAL_QUEUES may not name them."
    )
FLOWSITE_MAX_FLOW_DEPTH = env_int("FLOWSITE_MAX_FLOW_DEPTH", 100, minimum=1)
FLOWSITE_MAX_FLOW_JOBS = env_int("FLOWSITE_MAX_FLOW_JOBS", 10_000, minimum=1)
FLOWSITE_MAX_ATTEMPTS = env_int("FLOWSITE_MAX_ATTEMPTS", 100, minimum=1)
# The longest duration option (delay, timeout, backoff) a job may have, in milliseconds:
# larger values are refused, and a retry's exponential backoff never waits longer.
FLOWSITE_MAX_DURATION_MS = env_int("FLOWSITE_MAX_DURATION_MS", 30 * 24 * 3600 * 1000, minimum=1)
if FLOWSITE_MAX_DURATION_MS > 10 * 365 * 24 * 3600 * 1000:
    raise ImproperlyConfigured("FLOWSITE_MAX_DURATION_MS must be at most ten years (315360000000).")
# The deepest JSON a request body may nest (objects and arrays), checked as it is parsed:
# PostgreSQL and Python's own encoder give up near 1000 levels. A flow FLOWSITE_MAX_FLOW_DEPTH
# deep nests twice as deep (each job's children are an array), and its data a little more.
FLOWSITE_MAX_JSON_DEPTH = env_int("FLOWSITE_MAX_JSON_DEPTH", 512, minimum=2)
if not 2 * FLOWSITE_MAX_FLOW_DEPTH + 2 <= FLOWSITE_MAX_JSON_DEPTH <= 800:
    raise ImproperlyConfigured(
        "FLOWSITE_MAX_JSON_DEPTH must be at least twice FLOWSITE_MAX_FLOW_DEPTH plus 2, and at most 800."
    )
# Extra modules to import for ``@job_handler`` registrations (besides each app's handlers.py).
FLOWSITE_HANDLER_MODULES = env.list("FLOWSITE_HANDLER_MODULES", default=[])
# Simulated work of the example handlers, in milliseconds (``data.workMs`` overrides it),
# never more than FLOWSITE_EXAMPLE_MAX_WORK_MS: a longer request is cut down to it.
FLOWSITE_EXAMPLE_WORK_MS = env_int("FLOWSITE_EXAMPLE_WORK_MS", 300)
FLOWSITE_EXAMPLE_MAX_WORK_MS = env_int("FLOWSITE_EXAMPLE_MAX_WORK_MS", 10_000)
# Every job has a timeout, in seconds: FLOWSITE_DEFAULT_JOB_TIMEOUT when its ``opts.timeout``
# is absent (applied by the prefork worker that runs it, jobs.runner), and ``opts.timeout`` may not
# be longer than FLOWSITE_MAX_JOB_TIMEOUT (a 400).
FLOWSITE_DEFAULT_JOB_TIMEOUT = env_int("FLOWSITE_DEFAULT_JOB_TIMEOUT", 3600, minimum=1)
FLOWSITE_MAX_JOB_TIMEOUT = env_int("FLOWSITE_MAX_JOB_TIMEOUT", 24 * 3600, minimum=1)
if not FLOWSITE_DEFAULT_JOB_TIMEOUT <= FLOWSITE_MAX_JOB_TIMEOUT <= FLOWSITE_MAX_DURATION_MS // 1000:
    raise ImproperlyConfigured(
        "FLOWSITE_DEFAULT_JOB_TIMEOUT must be at most FLOWSITE_MAX_JOB_TIMEOUT, which must be at most "
        "FLOWSITE_MAX_DURATION_MS (in seconds)."
    )
# Live events (websockets, Socket.IO): off, the engine neither numbers nor sends them.
FLOWSITE_EVENTS = env_bool("FLOWSITE_EVENTS", True)
# Threads of the worker that runs inside the server in embedded mode.
FLOWSITE_EMBEDDED_CONCURRENCY = env_int("FLOWSITE_EMBEDDED_CONCURRENCY", 4, minimum=1)
# No stranded jobs (``jobs.liveness``, ``jobs.sweeps``). Every worker process renews its
# heartbeat every HEARTBEAT seconds; a run whose worker has been silent STALLED_AFTER
# seconds is lost (a failed attempt); a waiting or due job that has not started
# REDISPATCH_AFTER seconds after its message was published is published again. The
# sweeps run every SWEEP_INTERVAL seconds (Celery beat; a thread in embedded mode).
FLOWSITE_HEARTBEAT_SECONDS = env_int("FLOWSITE_HEARTBEAT_SECONDS", 5, minimum=1)
FLOWSITE_STALLED_AFTER = env_int("FLOWSITE_STALLED_AFTER", 30, minimum=2)
FLOWSITE_REDISPATCH_AFTER = env_int("FLOWSITE_REDISPATCH_AFTER", 30, minimum=1)
FLOWSITE_SWEEP_INTERVAL = env_int("FLOWSITE_SWEEP_INTERVAL", 5, minimum=1)
if FLOWSITE_HEARTBEAT_SECONDS * 2 > FLOWSITE_STALLED_AFTER:
    raise ImproperlyConfigured(
        "FLOWSITE_STALLED_AFTER must be at least twice FLOWSITE_HEARTBEAT_SECONDS, "
        "or a live worker could be taken for a dead one between two heartbeats."
    )

# WEBHOOKS
# ------------------------------------------------------------------------------
# Outgoing webhook deliveries (``webhooks``): timeouts of one POST, in seconds; the
# delays between attempts (seconds, each with +-20% jitter; attempts = delays + 1,
# default 6 attempts over about an hour); the most deliveries a webhook may have
# pending (beyond it, the newest are recorded failed); and whether targets may be
# private, loopback or link-local addresses (development and tests only).
FLOWSITE_WEBHOOK_CONNECT_TIMEOUT = env_int("FLOWSITE_WEBHOOK_CONNECT_TIMEOUT", 3, minimum=1)
FLOWSITE_WEBHOOK_READ_TIMEOUT = env_int("FLOWSITE_WEBHOOK_READ_TIMEOUT", 10, minimum=1)
try:
    FLOWSITE_WEBHOOK_RETRY_DELAYS = [
        int(value) for value in env.list("FLOWSITE_WEBHOOK_RETRY_DELAYS", default=["5", "30", "120", "600", "2700"])
    ]
except ValueError:
    raise ImproperlyConfigured("FLOWSITE_WEBHOOK_RETRY_DELAYS must be comma-separated integers (seconds).") from None
if any(delay < 0 for delay in FLOWSITE_WEBHOOK_RETRY_DELAYS):
    raise ImproperlyConfigured("FLOWSITE_WEBHOOK_RETRY_DELAYS must not be negative.")
FLOWSITE_WEBHOOK_MAX_PENDING = env_int("FLOWSITE_WEBHOOK_MAX_PENDING", 10_000, minimum=1)
FLOWSITE_WEBHOOK_ALLOW_PRIVATE = env_bool("FLOWSITE_WEBHOOK_ALLOW_PRIVATE", False)
# A flow's progress summary (``progress`` deliveries) is sent at most this often per flow
# while nobody watches it live (live watchers get one every 250 ms, and so do webhooks then).
FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS = env_int("FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS", 1000, minimum=250)

# REST FRAMEWORK
# ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so that an anonymous request gets 401 with a WWW-Authenticate header.
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["flowsite.api.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "flowsite.api.Pagination",
    "EXCEPTION_HANDLER": "flowsite.api.exception_handler",
    # Always UTC with microseconds, so the lean payload paths format timestamps identically.
    "DATETIME_FORMAT": "%Y-%m-%dT%H:%M:%S.%fZ",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Throttles (the token endpoint's) count requests per client address. 0: REMOTE_ADDR,
    # X-Forwarded-For is ignored (any client can write it). N > 0: N trusted proxies in
    # front of the server each append the address they saw to X-Forwarded-For, and the
    # N-th entry from the end is the client. (DRF's default, None, would trust the header.)
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
}

# API tokens (django-rest-knox): stored hashed, revocable, expiring.
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=env_int("FLOWSITE_TOKEN_TTL_HOURS", 24 * 30, minimum=0)) or None,
    "AUTO_REFRESH": False,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Flowsite API",
    "DESCRIPTION": "Run flows (trees of jobs) on Celery workers. Compatible with the legacy Node service.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.vocabulary.JobStatus",
        "FlowStatusEnum": "jobs.vocabulary.FlowStatus",
    },
}

# LOGGING
# ------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"celery": {"level": env.str("CELERY_LOG_LEVEL", default="WARNING")}},
}

# ADMIN LOGIN LOCKOUT (django-axes, accounts/lockout.py)
# ------------------------------------------------------------------------------
# /admin/login/ is locked for an account, and separately for a client address, after
# FAILURE_LIMIT failed logins within the cool-off; each further attempt restarts the wait.
# The address follows NUM_PROXIES, as the token endpoint's throttle does. Failed
# attempts are rows in the database (every process sees them; the admin lists them).
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last: turns a locked login into the lockout page
AUTHENTICATION_BACKENDS = ["accounts.lockout.LoginLockoutBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("FLOWSITE_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("FLOWSITE_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks
AXES_CLIENT_IP_CALLABLE = "accounts.lockout.client_address"
AXES_WHITELIST_CALLABLE = "accounts.lockout.counts_only_admin_logins"
AXES_LOCKOUT_TEMPLATE = "accounts/lockout.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False  # no banner on every manage.py command; lockouts are still logged
