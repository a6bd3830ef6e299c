"""Countersign settings: one file, driven by environment variables.

Nothing secret lives here. The embedded defaults (SQLite, an SQLite-file broker, the
on-disk outbox) need no servers; production points the same names at PostgreSQL, Redis
and a real mail transport. The README documents every variable.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

# Typed generics such as ModelForm[Campaign] must also work as base classes at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """Read a variable, or the contents of the file named by NAME_FILE (Docker secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text(encoding="utf-8").strip()
    return os.environ.get(name, default)


def refuse(name: str, value: str, expected: str) -> NoReturn:
    # Start-up stops here, naming the variable: a typo must never read as some default
    # (SECURE_SSL_REDIRECT=ture used to mean "off").
    raise ImproperlyConfigured(f"{name}={value!r} is not {expected}.")


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    refuse(name, value, "a boolean (true/false, yes/no, on/off, 1/0)")


def parse_number(name: str, value: str, kind: type[int] | type[float]) -> Any:
    try:
        number = kind(value.strip())
    except ValueError:
        refuse(name, value, "a whole number" if kind is int else "a number")
    if not math.isfinite(number):
        refuse(name, value, "a finite number")
    return number


def env_bool(name: str, default: bool = False) -> bool:
    value = env_str(name)
    return default if value.strip() == "" else parse_bool(name, value)


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    return default if value.strip() == "" else int(parse_number(name, value, int))


def env_float(name: str, default: float) -> float:
    value = env_str(name)
    return default if value.strip() == "" else float(parse_number(name, value, float))


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    value = env_str(name)
    path = Path(value) if value else default
    return path if path.is_absolute() else BASE_DIR / path


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off.")
    # DEBUG only: a per-checkout key, so the demo runs without setup and nothing is committed.
    SECRET_KEY = "debug-only-" + str(BASE_DIR)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list(
    "CSRF_TRUSTED_ORIGINS", ["http://localhost:8000", "http://127.0.0.1:8000"]
)
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

# Local state of the embedded mode: database, broker, outbox, beat schedule. Nothing here
# creates it: each writer makes the folder it needs when it first writes.
VAR_DIR = env_path("VAR_DIR", BASE_DIR / "var")

# --- Audit anchor -------------------------------------------------------------------------
# The audit chain's head, signed with this key and appended to AUDIT_ANCHOR_PATH after
# every approval and every AUDIT_ANCHOR_INTERVAL_SECONDS (audit/anchor.py). The key never
# enters the database, so whoever rewrites the database cannot re-sign the chain.
AUDIT_ANCHOR_KEY = env_str("AUDIT_ANCHOR_KEY")
if not AUDIT_ANCHOR_KEY and DEBUG:
    # DEBUG only: per checkout like SECRET_KEY's, and distinct from it. With DEBUG off a
    # missing key is the system check audit.E001 (settings still load, so the image build's
    # collectstatic needs no secret but its dummy SECRET_KEY).
    AUDIT_ANCHOR_KEY = "debug-only-audit-anchor-" + str(BASE_DIR)
AUDIT_ANCHOR_PATH = env_path("AUDIT_ANCHOR_PATH", VAR_DIR / "audit" / "anchors.jsonl")
AUDIT_ANCHOR_INTERVAL_SECONDS = env_float("AUDIT_ANCHOR_INTERVAL_SECONDS", 60.0)

# --- Second factor ------------------------------------------------------------------------
# TOTP (django-otp) with recovery codes, for approve, reject, the emergency stop and staff
# account changes (accounts/second_factor.py). On by default with production settings (DEBUG
# off); the demo (DEBUG on) runs without it. Approving also needs a password check younger
# than APPROVAL_REAUTH_MINUTES (sign-in, or password and code on the second-factor page).
SECOND_FACTOR_REQUIRED = env_bool("SECOND_FACTOR_REQUIRED", not DEBUG)
APPROVAL_REAUTH_MINUTES = env_int("APPROVAL_REAUTH_MINUTES", 15)
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Countersign")

# --- Retention ----------------------------------------------------------------------------
# How long deliveries and provider events are kept after a campaign ends, for
# `purge_expired_deliveries` (campaigns/retention.py). Approvals and audit events are never
# deleted by the app, whatever this says. Three years (with a leap day) by default: FINRA
# 2210 and SEC 17a-4 keep communications records for three.
RETENTION_DAYS = env_int("RETENTION_DAYS", 3 * 365 + 1)

INSTALLED_APPS = [
    # Before accounts: their admin modules register first, so accounts.admin can take the
    # device admin off the site (it would show recovery codes and let a superuser add a
    # device to someone else's account).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "accounts",
    "audit",
    "campaigns",
    "anymail",
    "axes",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "csp",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "accounts.middleware.UserTimezoneMiddleware",
    "config.errors.MethodNotAllowedPage",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: it turns a login refused by the throttle into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- Database -------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES: dict[str, dict[str, Any]] = {
        "default": dict(
            dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
        )
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "countersign.sqlite3",
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's backend, plus: it makes the database's folder on first connection.
    DATABASES["default"]["ENGINE"] = "config.sqlite"
    # Web, worker and beat share one file: WAL lets readers run beside the writer,
    # IMMEDIATE takes the write lock at BEGIN (no deadlock on lock upgrade), and the
    # timeout makes a busy writer wait instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    # Tests that run a real worker process need a database file the worker can open.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    DATABASES["default"].setdefault("TEST", {})

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts ---------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out sign-in before any password is checked.
    "accounts.login_throttle.LoginThrottleBackend",
    "accounts.backends.UsernameOrEmailBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

# Login throttle (django-axes, accounts/login_throttle.py): LOGIN_FAILURE_LIMIT wrong
# passwords for one account from one address lock that pair out for LOGIN_COOLOFF_MINUTES.
# 5 and 15 minutes: a reviewer who mistypes a few times is not stopped, one who is stopped
# waits a quarter of an hour at most (retrying meanwhile does not extend it), while a
# guesser gets 20 tries an hour per address instead of thousands.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True
# "olivia", "OLIVIA@example.com" and "olivia@example.com" are one account and one count.
AXES_USERNAME_CALLABLE = "accounts.login_throttle.throttle_username"
AXES_CLIENT_IP_CALLABLE = "accounts.login_throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "accounts.login_throttle.lockout_response"
# Behind the compose stack's proxy every request comes from the proxy: the client is the
# address it appends to X-Forwarded-For (only when that proxy is the sole way in).
TRUST_X_FORWARDED_FOR = env_bool("TRUST_X_FORWARDED_FOR", False)
# Lockouts are audited in the chain; axes' own logs of every sign-in would be a second,
# unbounded history, and its admin pages would bypass the role-based admin.
AXES_DISABLE_ACCESS_LOG = True
AXES_ENABLE_ADMIN = False
# No version banner on every manage.py command and worker start.
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed, compressed files need `collectstatic` first: on in production only.
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("STATICFILES_MANIFEST", not DEBUG)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security ------------------------------------------------------------------------------
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# The container health check calls plain http on loopback; everything else is redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Every page: scripts and styles from this site only (inline style attributes stay: the
# admin's templates use them), no plugins, no framing, forms post back here. The review
# screen's HTML preview sets its own, stricter policy (campaigns.views.preview_html).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "frame-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    # Behind the compose stack's TLS-terminating proxy, which must overwrite this header.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS = [
    # HSTS preload is a one-way commitment for the whole domain; leave it to the operator.
    "security.W021",
]

# --- Mail ------------------------------------------------------------------------------------
# EMAIL_BACKEND is not a user setting: every message passes the guard, which hands it
# to EMAIL_TRANSPORT only if it is addressed to exactly one person.
EMAIL_BACKEND = "campaigns.backends.GuardedBackend"
EMAIL_TRANSPORT = env_str("EMAIL_TRANSPORT", "campaigns.backends.OutboxBackend")
OUTBOX_DIR = env_path("OUTBOX_DIR", VAR_DIR / "outbox")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Countersign <countersign@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Anymail's settings that are switches or numbers (from anymail's own defaults); every
# other ANYMAIL_* value is a string. Anymail reads a switch by truthiness, so the string
# "false" would switch it on: a switch must read as a boolean, and a value that reads as
# one is refused for a setting not known to be a switch.
ANYMAIL_SWITCHES = frozenset(
    {
        "IGNORE_UNSUPPORTED_FEATURES",
        "IGNORE_RECIPIENT_STATUS",
        "DEBUG_API_REQUESTS",
        "USE_BULK_API",
        "GENERATE_MESSAGE_ID",
        "WORKAROUND_DISPLAY_NAME_BUGS",
        "PREVENT_HEADER_ENCODING_BUGS",
        "VERIFY_ATTACHMENT_EXTENSIONS",
        "AUTO_CONFIRM_SNS_SUBSCRIPTIONS",
        "TRACK_INITIAL_OPEN_AS_OPENED",
    }
)
ANYMAIL_NUMBERS = frozenset({"REQUESTS_TIMEOUT"})


def anymail_setting(variable: str, value: str) -> Any:
    """ANYMAIL_<NAME>=value as anymail wants it, or refuse it naming the variable.

    Provider settings carry the provider's prefix (POSTMARK_USE_BULK_API), so a name is
    matched on its last words.
    """
    name = variable.removeprefix("ANYMAIL_")
    if any(name == known or name.endswith(f"_{known}") for known in ANYMAIL_SWITCHES):
        return parse_bool(variable, value)
    if any(name == known or name.endswith(f"_{known}") for known in ANYMAIL_NUMBERS):
        return parse_number(variable, value, float)
    if value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        refuse(variable, value, f"a value for {name}, which is not a switch anymail has")
    return value


ANYMAIL: dict[str, Any] = {}
for _key in sorted(os.environ):
    # ANYMAIL_POSTMARK_SERVER_TOKEN=... -> ANYMAIL["POSTMARK_SERVER_TOKEN"]; *_FILE reads a file.
    if not _key.startswith("ANYMAIL_"):
        continue
    _variable = _key.removesuffix("_FILE")
    if not _variable.removeprefix("ANYMAIL_"):
        refuse(_key, os.environ[_key], "an anymail setting (ANYMAIL_<NAME>)")
    ANYMAIL[_variable.removeprefix("ANYMAIL_")] = anymail_setting(_variable, env_str(_variable))
# Optional inbound address for mailto: List-Unsubscribe; https one-click is always present.
UNSUBSCRIBE_MAILTO = env_str("UNSUBSCRIBE_MAILTO")

# --- Celery --------------------------------------------------------------------------------
# The embedded broker is an SQLite file beside the database (config/broker.py says why);
# production names Redis. config/celery.py maps both schemes to Countersign's transport
# classes, which drop a message they cannot decode instead of letting it stop the worker.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or f"sqlite:///{VAR_DIR / 'broker.sqlite3'}"
_broker_scheme = CELERY_BROKER_URL.partition("://")[0].lower()
if _broker_scheme in {"sqlite", "sqla+sqlite"}:
    # kombu would take the "sqla+" prefix as its own transport, without our class.
    CELERY_BROKER_URL = CELERY_BROKER_URL.removeprefix("sqla+")
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        # Seconds between polls of an empty queue (kombu's default is 1): also how long a
        # worker whose prefetch is full waits before it looks again.
        "polling_interval": 0.05,
    }
    CELERY_RESULT_BACKEND = env_str(
        "CELERY_RESULT_BACKEND", f"db+sqlite:///{VAR_DIR / 'celery-results.sqlite3'}"
    )
    # Results are written by workers and read by the web process: wait for the lock.
    CELERY_DATABASE_ENGINE_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 30}}
elif _broker_scheme in {"redis", "rediss"}:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Longer than any task's hard time limit, so Redis never redelivers a running task.
        "visibility_timeout": 3600,
    }
    CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
else:
    # Other transports lack the guard against undecodable messages, and the file-system
    # one hands consumers half-written messages (issue 12).
    refuse(
        "CELERY_BROKER_URL",
        CELERY_BROKER_URL,
        "a supported broker: sqlite:///path/to/broker.sqlite3 (embedded) or redis://...",
    )
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_TIME_LIMIT = 600
CELERY_TASK_SOFT_TIME_LIMIT = 540
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict[str, Any] = {
    # Repairs expired claims, launches due scheduled campaigns, re-dispatches lost work,
    # marks campaigns complete. Cheap when there is nothing to do.
    "sweep": {"task": "countersign.sweep", "schedule": env_float("SWEEP_INTERVAL_SECONDS", 15.0)},
    # Anchors the audit chain outside the database (approvals are anchored at once too).
    "anchor-audit": {"task": "countersign.anchor_audit", "schedule": AUDIT_ANCHOR_INTERVAL_SECONDS},
}

REDIS_URL = env_str("REDIS_URL")

# --- Sending ------------------------------------------------------------------------------
# Messages per second per transport account, shared by every worker.
SEND_RATE_PER_SECOND = env_float("SEND_RATE_PER_SECOND", 20.0)
SEND_BURST = env_int("SEND_BURST", 20)
SEND_BATCH_SIZE = env_int("SEND_BATCH_SIZE", 200)
# How many batch chains run side by side for one campaign (at most one per worker process helps).
SEND_PARALLEL_BATCHES = env_int("SEND_PARALLEL_BATCHES", 2)
CLAIM_LEASE_SECONDS = env_int("CLAIM_LEASE_SECONDS", 300)
# How stale a worker's view of its campaign's state (pause, cancel, emergency stop) may get:
# the state is re-read before a message once this many seconds have passed since the last read.
SEND_STATE_RECHECK_SECONDS = env_float("SEND_STATE_RECHECK_SECONDS", 0.25)
# Test sends carry unreviewed drafts: only to active staff accounts' addresses or these
# internal domains (comma-separated), never to an audience member, and only a few.
TEST_SEND_INTERNAL_DOMAINS = env_list("TEST_SEND_INTERNAL_DOMAINS", [])
TEST_SEND_MAX_SEEDS = env_int("TEST_SEND_MAX_SEEDS", 5)
# Approving a campaign for more recipients than this asks the reviewer to type the count.
APPROVE_TYPED_COUNT_ABOVE = env_int("APPROVE_TYPED_COUNT_ABOVE", 500)

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
