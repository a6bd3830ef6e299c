"""The production stack, checked without a Docker engine.

docker-compose.yml is validated against the compose spec and then read for the mistakes
the schema cannot see (dangling dependencies, commands naming modules that do not exist,
a one-shot service that would restart forever). The Dockerfile's build step, the
production settings (`check --deploy`) and every container health check are run for real
against local processes: gunicorn with production settings, a Celery worker and beat.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings
from ruamel.yaml import YAML

if TYPE_CHECKING:
    from tests.workers import CeleryWorkers

pytest_plugins = ["tests.workers"]

ROOT = Path(settings.BASE_DIR)
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
VENV_BIN = Path(sys.executable).parent
PUBLIC_HOST = "countersign.example.com"
INFRASTRUCTURE = {"postgres", "redis"}
RESTART_POLICIES = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return document


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if name not in INFRASTRUCTURE}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment as the compose stack gives web: no test defaults leak in.

    Built from scratch rather than copied, so pytest-env's SECURE_SSL_REDIRECT=false,
    cookie overrides and DEBUG cannot soften what `check --deploy` sees.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "AUDIT_ANCHOR_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": PUBLIC_HOST,
        "CSRF_TRUSTED_ORIGINS": f"https://{PUBLIC_HOST}",
        "PUBLIC_BASE_URL": f"https://{PUBLIC_HOST}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "TRUST_X_FORWARDED_PROTO": "true",
        "VAR_DIR": str(tmp_path / "var"),
    }
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- docker-compose.yml: schema ----------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize(
    ("original", "broken", "complaint"),
    [
        ("    healthcheck:", "    healthchek:", "'healthchek' was unexpected"),
        ("condition: service_healthy", "condition: service_sometimes", "service_sometimes"),
    ],
)
def test_compose_validator_rejects_a_broken_copy(
    tmp_path: Path, original: str, broken: str, complaint: str
) -> None:
    # Negative control: proves the validation above can fail at all.
    text = COMPOSE.read_text()
    assert original in text
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(original, broken))

    result = check_compose_schema(copy)

    assert result.returncode == 1
    assert complaint in result.stdout


# --- docker-compose.yml: what the schema cannot see --------------------------------------


def test_compose_has_the_production_services() -> None:
    services = load_compose()["services"]
    assert {"web", "worker", "beat", "postgres", "redis"} <= set(services)
    assert re.fullmatch(r"postgres:1[56](\..*)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7(\..*)?", services["redis"]["image"])


def test_every_depends_on_target_is_a_defined_service() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on undefined service {target}"
            assert target != name
            if target in INFRASTRUCTURE:
                assert rule["condition"] == "service_healthy", (name, target)


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert RESTART_POLICIES.match(str(service.get("restart", ""))), name


def test_one_shot_services_do_not_restart_after_success() -> None:
    # "unless-stopped" on a migrate job would rerun it forever; and what waits for it to
    # complete must not be a long-running service.
    services = load_compose()["services"]
    one_shot = {
        target
        for service in services.values()
        for target, rule in service.get("depends_on", {}).items()
        if rule["condition"] == "service_completed_successfully"
    }
    assert one_shot == {"migrate"}
    for name in one_shot:
        assert services[name]["restart"] in {"no", "on-failure"}
    for name in {"web", "worker", "beat", "postgres", "redis"}:
        assert services[name]["restart"] == "unless-stopped"
    for name in {"web", "worker", "beat"}:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_app_services_build_from_this_repository_and_only_they_read_dot_env() -> None:
    compose = load_compose()
    for name, service in app_services(compose).items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context).resolve() == ROOT, name
        assert (ROOT / context / "Dockerfile").exists()
        assert service["env_file"] in (".env", [".env"]), name
    for name in INFRASTRUCTURE:
        service = compose["services"][name]
        assert "build" not in service
        # The application's secrets stay out of the database and broker containers.
        assert "env_file" not in service, name
    postgres_env = compose["services"]["postgres"]["environment"]
    assert set(postgres_env) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    # Interpolated from the same .env that DATABASE_URL is written in.
    assert all(f"${{{name}" in value for name, value in postgres_env.items())


def test_web_trusts_the_proxy_header_and_listens_on_loopback_only() -> None:
    web = load_compose()["services"]["web"]
    assert web["environment"]["TRUST_X_FORWARDED_PROTO"] == "true"
    assert web["ports"] == ["127.0.0.1:8000:8000"]


def test_named_volumes_are_declared() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    used = {
        str(mount).split(":", 1)[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
    }
    assert used, "no volumes at all: database and broker data would not survive"
    assert used <= declared
    assert "postgres-data" in used and "redis-data" in used


def _command_targets(argv: list[str]) -> list[Path]:
    """The repository files a command line depends on."""
    targets = []
    for i, token in enumerate(argv):
        if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+:[a-z_]+", token):  # config.wsgi:application
            targets.append(ROOT / (token.split(":")[0].replace(".", "/") + ".py"))
        elif token.endswith(".py"):
            targets.append(ROOT / token)
        elif token == "-A":
            targets.append(ROOT / argv[i + 1] / "celery.py")
    return targets


def _dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "Dockerfile has no exec-form CMD"
    command: list[str] = YAML(typ="safe").load(match.group(1))
    return command


def test_every_command_names_a_program_and_module_that_exist() -> None:
    commands = {name: svc["command"] for name, svc in app_services(load_compose()).items()}
    commands["Dockerfile CMD"] = _dockerfile_cmd()
    for name, argv in commands.items():
        assert isinstance(argv, list), f"{name}: use the exec form, not a shell string"
        # The program is one the image installs from requirements.txt (or python itself).
        assert (VENV_BIN / argv[0]).exists(), f"{name}: {argv[0]} is not installed"
        targets = _command_targets(argv)
        assert targets, f"{name}: {argv} names no module of this repository"
        for target in targets:
            assert target.is_file(), f"{name}: {target.relative_to(ROOT)} does not exist"
    assert "application" in (ROOT / "config/wsgi.py").read_text()
    assert "app = Celery(" in (ROOT / "config/celery.py").read_text()


# --- Dockerfile and .dockerignore ------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_bakes_no_secret() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert "pip install -r requirements.txt" in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    # USER comes after the last RUN: nothing at run time executes as root.
    last_run = max(m.start() for m in re.finditer(r"^RUN ", text, re.MULTILINE))
    assert text.rindex("USER ") > last_run
    env_blocks = re.findall(r"^ENV (?:.*\\\n)*.*$", text, re.MULTILINE)
    assert not any("SECRET_KEY" in block for block in env_blocks)


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "var", "staticfiles"} <= ignored


def _collectstatic_step() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's collectstatic RUN: its inline environment and its command."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^RUN ((?:\w+=\S+\s+)+)(python manage\.py collectstatic[^&]*)", text, re.M)
    assert match, "no `RUN NAME=value python manage.py collectstatic` step in the Dockerfile"
    inline = dict(item.split("=", 1) for item in match.group(1).split())
    return inline, shlex.split(match.group(2))


@pytest.fixture(scope="module")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the Dockerfile's collectstatic step with exactly the environment it has there."""
    tmp = tmp_path_factory.mktemp("image")
    inline, command = _collectstatic_step()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        # The image's ENV, pointed at temporary folders.
        "VAR_DIR": str(tmp / "var"),
        "STATIC_ROOT": str(tmp / "static"),
        **inline,
    }
    result = subprocess.run(
        [sys.executable, *command[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "static"


def test_dockerfile_collectstatic_step_builds_the_manifest(collected_static: Path) -> None:
    inline, _ = _collectstatic_step()
    assert set(inline) == {"SECRET_KEY"}, "the build step should need nothing but a dummy key"
    assert (collected_static / "staticfiles.json").is_file()
    assert list(collected_static.glob("admin/css/base.*.css"))


# --- .env.example ----------------------------------------------------------------------


def _example_entries() -> dict[str, str]:
    """NAME -> value for every variable .env.example mentions, commented-out ones too."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def test_env_example_documents_every_variable_settings_read() -> None:
    source = (ROOT / "config/settings.py").read_text()
    read = set(re.findall(r'(?:env_\w+|environ\.get)\(\s*"([A-Z][A-Z0-9_]*)"', source))
    assert {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} <= read  # the regex works
    entries = _example_entries()
    missing = read - set(entries)
    assert not missing, f".env.example does not mention {sorted(missing)}"
    for name in (
        "DEBUG ALLOWED_HOSTS CSRF_TRUSTED_ORIGINS REDIS_URL EMAIL_TRANSPORT EMAIL_HOST "
        "ANYMAIL_POSTMARK_SERVER_TOKEN ANYMAIL_WEBHOOK_SECRET PUBLIC_BASE_URL DEMO_PASSWORD "
        "SEND_RATE_PER_SECOND"
    ).split():
        assert name in entries, name


def test_env_example_holds_placeholders_not_secrets() -> None:
    entries = _example_entries()
    secret_names = [n for n in entries if re.search(r"SECRET|PASSWORD|TOKEN", n)]
    assert "SECRET_KEY" in secret_names
    for name in secret_names:
        value = entries[name]
        assert not value or "replace-me" in value or name == "DEMO_PASSWORD", name
    # The stack's own pieces agree with each other.
    db = urllib.parse.urlsplit(entries["DATABASE_URL"])
    assert (db.hostname, db.username, db.password, db.path.lstrip("/")) == (
        "postgres",
        entries["POSTGRES_USER"],
        entries["POSTGRES_PASSWORD"],
        entries["POSTGRES_DB"],
    )
    assert urllib.parse.urlsplit(entries["CELERY_BROKER_URL"]).hostname == "redis"
    assert entries["DEBUG"] == "false"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# --- production settings ---------------------------------------------------------------


def test_check_deploy_finds_no_issues_with_production_settings(tmp_path: Path) -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_when_the_https_protections_are_switched_off(tmp_path: Path) -> None:
    # Control: the check above is able to fail, and on exactly what the test suite relaxes.
    env = production_env(tmp_path, SECURE_SSL_REDIRECT="false", SESSION_COOKIE_SECURE="false")
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "security.W008" in result.stderr and "security.W012" in result.stderr


def test_settings_refuse_to_load_without_secret_key_when_debug_is_off(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    del env["SECRET_KEY"]

    result = manage("check", env=env)

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY (or SECRET_KEY_FILE) is required" in result.stderr


def test_secret_key_can_come_from_a_file(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(64)
    key_file = tmp_path / "secret_key"
    key_file.write_text(key + "\n")  # as `echo ... > file` writes it
    env = production_env(tmp_path, SECRET_KEY_FILE=str(key_file))
    del env["SECRET_KEY"]

    deploy = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    loaded = manage(
        "shell",
        "--no-imports",
        "-c",
        f"from django.conf import settings; print(settings.SECRET_KEY == {key!r})",
        env=env,
    )

    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "True"  # the newline `echo` adds is not part of the key


# --- the health checks, run for real -------------------------------------------------------


def _healthcheck_argv(service: str) -> list[str]:
    test: list[str] = load_compose()["services"][service]["healthcheck"]["test"]
    return test


@pytest.fixture
def gunicorn(tmp_path: Path, collected_static: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The compose web command, on a free loopback port, with production settings."""
    port = free_port()
    env = production_env(tmp_path, STATIC_ROOT=str(collected_static))
    argv = list(load_compose()["services"]["web"]["command"])
    assert "--bind=0.0.0.0:8000" in argv
    argv[argv.index("--bind=0.0.0.0:8000")] = f"--bind=127.0.0.1:{port}"
    argv[argv.index("--workers=3")] = "--workers=1"
    log = (tmp_path / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / argv[0]), *argv[1:]],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
                assert time.monotonic() < deadline, "gunicorn did not start listening"
                time.sleep(0.2)
        yield port, env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _run_web_healthcheck(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    kind, program, flag, script = _healthcheck_argv("web")
    assert (kind, program, flag) == ("CMD", "python", "-c")
    assert script.count("http://127.0.0.1:8000/healthz") == 1
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )


def _get(port: int, path: str, **headers: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": PUBLIC_HOST, **headers})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_web_healthcheck_passes_against_gunicorn_with_production_settings(
    gunicorn: tuple[int, dict[str, str]],
) -> None:
    port, env = gunicorn

    healthy = _run_web_healthcheck(port, env)
    # Control: a Host that ALLOWED_HOSTS refuses makes the same check fail.
    wrong_host = _run_web_healthcheck(port, {**env, "PUBLIC_BASE_URL": "https://elsewhere.test"})

    assert healthy.returncode == 0, healthy.stderr
    assert wrong_host.returncode != 0
    assert "400" in wrong_host.stderr


def test_web_redirects_plain_http_and_serves_https_from_behind_the_proxy(
    gunicorn: tuple[int, dict[str, str]],
) -> None:
    port, _ = gunicorn

    plain = _get(port, "/admin/login/")
    proxied = _get(port, "/admin/login/", **{"X-Forwarded-Proto": "https"})

    assert plain.status == 301
    assert plain.headers["Location"] == f"https://{PUBLIC_HOST}/admin/login/"
    assert proxied.status == 200
    assert "Secure" in proxied.headers["Set-Cookie"]  # the CSRF cookie
    assert proxied.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_web_serves_hashed_static_files_through_whitenoise(
    gunicorn: tuple[int, dict[str, str]], collected_static: Path
) -> None:
    port, _ = gunicorn
    css = next(collected_static.glob("admin/css/base.*.css")).relative_to(collected_static)

    response = _get(port, f"/static/{css}", **{"X-Forwarded-Proto": "https"})

    assert response.status == 200
    assert "max-age=315360000" in response.headers["Cache-Control"]  # immutable, hashed name


def _run_shell_healthcheck(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    kind, command = _healthcheck_argv(service)
    assert kind == "CMD-SHELL"
    # Compose turns "$$" into "$"; the container's shell expands $HOSTNAME. Here the
    # venv's celery stands in for the image's.
    command = command.replace("$$", "$")
    env = {**env, "HOSTNAME": socket.gethostname(), "PATH": f"{VENV_BIN}:{env['PATH']}"}
    return subprocess.run(
        ["sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


# The compose stack's broker is Redis. `inspect ping` needs broadcast (fanout) messages,
# which the embedded SQLite broker does not carry, so the check runs on the Redis pass.
@pytest.mark.needs_redis
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_and_beat_healthchecks_answer_only_while_they_run(
    celery_workers: CeleryWorkers,
) -> None:
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        pytest.skip("the broker is not Redis, the compose stack's broker")
    services = load_compose()["services"]
    worker = celery_workers.launch(services["worker"]["command"], name="compose-worker")
    beat = celery_workers.launch(services["beat"]["command"], name="compose-beat")
    worker.wait_for_log(f"celery@{socket.gethostname()} ready.", timeout=90)
    beat.wait_for_log("beat: Starting...", timeout=60)
    env = worker.env

    worker_up = _run_shell_healthcheck("worker", env)
    beat_up = _run_shell_healthcheck("beat", env)
    worker.stop()
    worker_down = _run_shell_healthcheck("worker", env)

    assert worker_up.returncode == 0, worker_up.stdout + worker_up.stderr
    assert "pong" in worker_up.stdout
    assert beat_up.returncode == 0, beat_up.stdout + beat_up.stderr
    assert f"celerybeat@{socket.gethostname()}: OK" in beat_up.stdout
    assert worker_down.returncode != 0
