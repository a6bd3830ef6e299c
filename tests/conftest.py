"""Personas and service checks shared by the whole suite."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.contrib.auth.models import Group

from accounts.models import User
from accounts.roles import sync_roles_after_migrate
from tests.postmark_stub import postmark_stub  # noqa: F401  (shared fixture)

DEMO_PASSWORD = "correct-horse-battery-staple"


def _uses_postgres() -> bool:
    engine: str = settings.DATABASES["default"]["ENGINE"]
    return engine.endswith("postgresql")


def _redis_urls() -> list[str]:
    urls = [settings.CELERY_BROKER_URL, settings.REDIS_URL]
    return [u for u in urls if u and u.startswith(("redis://", "rediss://"))]


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "localhost", parsed.port or 6379), timeout=3
        ):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    in_ci = os.environ.get("CI", "").lower() == "true"
    redis_urls = _redis_urls()
    unreachable = [u for u in redis_urls if not _reachable(u)]
    if unreachable and in_ci:
        # In CI a configured service that is down is a failure, never a silent skip.
        pytest.exit(f"CI=true and Redis is unreachable: {', '.join(unreachable)}", returncode=3)
    for item in items:
        if "needs_postgres" in item.keywords and not _uses_postgres():
            item.add_marker(pytest.mark.skip(reason="DATABASE_URL does not name PostgreSQL"))
        if "needs_redis" in item.keywords and (not redis_urls or unreachable):
            item.add_marker(pytest.mark.skip(reason="no reachable Redis configured"))
    items[:] = _serialized_rollback_first(items)


def _transactional(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    fixtures = getattr(item, "fixturenames", ())
    return bool(marker and marker.kwargs.get("transaction")) or "transactional_db" in fixtures


def _serialized_rollback_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The serialized_rollback tests first among the transactional ones (which pytest-django
    already runs after the others), whatever the file names.

    Django restores such a test's database by inserting the saved rows again. A plain
    transactional test before it ends with a flush whose post_migrate makes the role groups
    anew, under new ids, and the restore then fails on their unique names.
    """
    serialized = [
        item
        for item in items
        if (marker := item.get_closest_marker("django_db"))
        and marker.kwargs.get("serialized_rollback")
    ]
    moved = {id(item) for item in serialized}
    others = [item for item in items if id(item) not in moved]
    first = next((i for i, item in enumerate(others) if _transactional(item)), len(others))
    return [*others[:first], *serialized, *others[first:]]


@pytest.fixture(autouse=True)
def _guarded_mail(settings: Any) -> None:
    # pytest-django swaps EMAIL_BACKEND for locmem; put the guard back on top of it, so
    # every test's mail passes the same guard as production mail.
    settings.EMAIL_BACKEND = "campaigns.backends.GuardedBackend"
    settings.EMAIL_TRANSPORT = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def _audit_anchor_per_test(settings: Any, tmp_path: Path) -> None:
    # The anchor log is a file, so it outlives each test's rolled-back database: every test
    # gets its own, or one test's anchors would disagree with the next test's chain.
    settings.AUDIT_ANCHOR_PATH = tmp_path / "audit-anchors.jsonl"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Persona logins need a hash, not a slow one: the default hasher dominates test time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_staff(username: str, *roles: str, superuser: bool = False, **extra: Any) -> User:
    user = User.objects.create_user(
        username=username,
        email=extra.pop("email", f"{username}@example.com"),
        password=DEMO_PASSWORD,
        is_staff=True,
        is_superuser=superuser,
        **extra,
    )
    for role in roles:
        if not Group.objects.filter(name=role).exists():
            # A flush that skips post_migrate (after a serialized_rollback test) leaves the
            # next transactional test without the roles; make them as post_migrate does.
            sync_roles_after_migrate()
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def olivia(db: None) -> User:
    """Ops: the usual campaign author."""
    return make_staff("olivia", "Ops", first_name="Olivia")


@pytest.fixture
def oscar(db: None) -> User:
    """Ops: a second author or editor."""
    return make_staff("oscar", "Ops", first_name="Oscar")


@pytest.fixture
def rita(db: None) -> User:
    """Compliance: the reviewer."""
    return make_staff("rita", "Compliance", first_name="Rita")


@pytest.fixture
def root(db: None) -> User:
    """Admin and superuser: runs the system, approves nothing."""
    return make_staff("root", "Admin", superuser=True)


@pytest.fixture
def mallory(db: None) -> User:
    """Staff with no role at all."""
    return make_staff("mallory")


@pytest.fixture
def make_member(db: None) -> Callable[..., User]:
    """Create an audience member (non-staff, never logs in)."""
    counter = {"n": 0}

    def make(email: str | None = None, **fields: Any) -> User:
        counter["n"] += 1
        email = email or f"member{counter['n']}@example.org"
        return User.objects.create_user(
            username=fields.pop("username", email.lower()),
            email=email,
            password=None,
            **fields,
        )

    return make
