"""config/settings.py refuses nonsense and has no side effects (issue 7.6).

Each case imports the settings in a fresh subprocess with its own environment, as a
process starting up would: a bad value must stop start-up with the variable's name, and
importing must create no folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
# Variables that would point the child at the suite's services.
SERVICES = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")
# Print what the case looks at: the settings, as Django loaded them.
SHOW = """
import json, django
django.setup()
from django.conf import settings
names = {names!r}
print(json.dumps({{name: getattr(settings, name) for name in names}}, default=str))
"""


def load_settings(
    tmp_path: Path, names: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if k not in SERVICES}
    child_env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        VAR_DIR=str(tmp_path / "var"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-c", SHOW.format(names=names)],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def loaded(tmp_path: Path, *names: str, **env: str) -> dict[str, Any]:
    result = load_settings(tmp_path, names, **env)
    assert result.returncode == 0, result.stderr
    values: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SECURE_SSL_REDIRECT", "ture"),
        ("DEBUG", "maybe"),
        ("SESSION_COOKIE_SECURE", "yess"),
        ("EMAIL_USE_TLS", "2"),
        ("EMAIL_PORT", "25a"),
        ("SECURE_HSTS_SECONDS", "1e3"),
        ("SEND_BATCH_SIZE", "fifty"),
        ("SEND_RATE_PER_SECOND", "nan"),
        ("SWEEP_INTERVAL_SECONDS", "15s"),
        ("ANYMAIL_POSTMARK_USE_BULK_API", "nope"),
        ("ANYMAIL_IGNORE_RECIPIENT_STATUS", "ture"),
        ("ANYMAIL_REQUESTS_TIMEOUT", "soon"),
        # Reads as a boolean, for a setting that is not a switch: anymail would see the
        # string "false", which is truthy.
        ("ANYMAIL_MAILERSEND_BATCH_SEND_MODE", "false"),
        ("CELERY_BROKER_URL", "filesystem://"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = load_settings(tmp_path, (), **{variable: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{variable}={value!r} is not" in result.stderr


def test_good_values_parse_to_what_they_say(tmp_path: Path) -> None:
    values = loaded(
        tmp_path,
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "EMAIL_PORT",
        "SEND_RATE_PER_SECOND",
        "ANYMAIL",
        SECURE_SSL_REDIRECT=" TRUE ",
        SESSION_COOKIE_SECURE="off",
        EMAIL_PORT="587",
        SEND_RATE_PER_SECOND="2.5",
        ANYMAIL_IGNORE_RECIPIENT_STATUS="false",
        ANYMAIL_POSTMARK_USE_BULK_API="no",
        ANYMAIL_REQUESTS_TIMEOUT="7.5",
        ANYMAIL_POSTMARK_SERVER_TOKEN="12345",
    )

    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SESSION_COOKIE_SECURE"] is False
    assert values["EMAIL_PORT"] == 587
    assert values["SEND_RATE_PER_SECOND"] == 2.5
    assert values["ANYMAIL"] == {
        "IGNORE_RECIPIENT_STATUS": False,
        "POSTMARK_USE_BULK_API": False,
        "REQUESTS_TIMEOUT": 7.5,
        # A token made of digits stays the string it is.
        "POSTMARK_SERVER_TOKEN": "12345",
    }


def test_empty_values_mean_the_default(tmp_path: Path) -> None:
    values = loaded(
        tmp_path,
        "SECURE_SSL_REDIRECT",
        "EMAIL_PORT",
        DEBUG="",
        SECURE_SSL_REDIRECT="",
        EMAIL_PORT=" ",
    )

    # DEBUG empty: off, so the redirect defaults to on.
    assert values == {"SECURE_SSL_REDIRECT": True, "EMAIL_PORT": 25}


def test_importing_settings_and_the_celery_app_creates_no_folder(tmp_path: Path) -> None:
    values = loaded(tmp_path, "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")

    var_dir = tmp_path / "var"
    assert not var_dir.exists(), sorted(var_dir.rglob("*"))
    # The embedded broker and its results are SQLite files that do not exist yet.
    assert values == {
        "CELERY_BROKER_URL": f"sqlite:///{var_dir / 'broker.sqlite3'}",
        "CELERY_RESULT_BACKEND": f"db+sqlite:///{var_dir / 'celery-results.sqlite3'}",
    }


def test_the_embedded_database_makes_its_folder_when_first_opened(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.db import connection; "
            "connection.ensure_connection(); print(connection.settings_dict['NAME'])",
        ],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k not in SERVICES},
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "VAR_DIR": str(var_dir),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(var_dir / "countersign.sqlite3")
    assert (var_dir / "countersign.sqlite3").is_file()


def test_the_broker_url_picks_countersigns_transport_and_logs_show_its_scheme() -> None:
    from config.broker import RedisTransport, SQLiteTransport
    from config.celery import app

    scheme = settings.CELERY_BROKER_URL.split("://", 1)[0]
    with app.connection_for_write() as conn:
        transport = conn.transport

        assert type(transport) is (SQLiteTransport if scheme == "sqlite" else RedisTransport)
        assert conn.as_uri().startswith(f"{scheme}://")
