"""The Postmark stub answers the way anymail's Postmark backend expects."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from anymail.exceptions import AnymailRecipientsRefused, AnymailRequestsAPIError
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from tests import postmark_stub as stub_module
from tests.postmark_stub import POSTMARK_TRANSPORT, PostmarkStub, Reply

ANN = "ann@example.org"
# The shared fixture, as other test modules (or conftest) pick it up.
postmark_stub = stub_module.postmark_stub


@pytest.fixture
def stub() -> Iterator[PostmarkStub]:
    with PostmarkStub() as running, running.configured(REQUESTS_TIMEOUT=0.5):
        yield running


def send_one(to: str = ANN) -> EmailMessage:
    message = EmailMessage("Hello", "Body", "news@countersign.test", [to])
    get_connection(POSTMARK_TRANSPORT).send_messages([message])
    return message


def test_accepts_a_message_and_answers_with_postmarks_fields(stub: PostmarkStub) -> None:
    message = send_one()
    (request,) = stub.requests
    assert request.path == "/email"
    assert request.headers["X-Postmark-Server-Token"] == "test-token"
    assert request.json["To"] == ANN and request.json["Subject"] == "Hello"
    status = message.anymail_status  # type: ignore[attr-defined]
    assert status.status == {"sent"}
    assert status.esp_response.json()["To"] == ANN
    assert status.message_id == status.esp_response.json()["MessageID"]


def test_reports_the_scripted_to_instead_of_the_requested_one(stub: PostmarkStub) -> None:
    stub.script(Reply.ok(to=f"{ANN}, bob@example.org"))
    message = send_one()
    assert set(message.anymail_status.recipients) == {ANN, "bob@example.org"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("reply", "status"),
    [(Reply.invalid_address(ANN), "invalid"), (Reply.inactive_recipient(ANN), "rejected")],
)
def test_422_refusals_use_postmarks_error_codes(
    stub: PostmarkStub, reply: Reply, status: str
) -> None:
    stub.script(reply)
    with pytest.raises(AnymailRecipientsRefused) as refused:
        send_one()
    assert refused.value.response.status_code == 422
    assert stub.requests[0].json["To"] == ANN
    message = refused.value.email_message
    assert message.anymail_status.recipients[ANN].status == status


@pytest.mark.parametrize(
    ("reply", "code"),
    [(Reply.rate_limited(), 429), (Reply.server_error(), 500), (Reply.unavailable(), 503)],
)
def test_scripted_http_errors_reach_anymail(stub: PostmarkStub, reply: Reply, code: int) -> None:
    stub.script(reply)
    with pytest.raises(AnymailRequestsAPIError) as failed:
        send_one()
    assert failed.value.status_code == code
    send_one()  # the script is used up: the next request succeeds
    assert len(stub.requests) == 2


def test_a_hang_outlasts_the_client_timeout_after_the_request_arrived(stub: PostmarkStub) -> None:
    stub.script(Reply.hang(5))
    with pytest.raises(AnymailRequestsAPIError, match="Error posting"):
        send_one()
    assert len(stub.requests) == 1  # the provider has it; the outcome is unknown to us


def test_a_wrong_token_is_refused(stub: PostmarkStub) -> None:
    with stub.configured(POSTMARK_SERVER_TOKEN="wrong"):
        with pytest.raises(AnymailRequestsAPIError) as failed:
            send_one()
    assert failed.value.status_code == 401


def test_a_worker_process_reaches_the_stub_through_environment_variables(
    stub: PostmarkStub,
) -> None:
    code = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from django.core.mail import EmailMessage, get_connection\n"
        "m = EmailMessage('From a worker', 'Body', 'news@countersign.test', ['ann@example.org'])\n"
        "print(get_connection(settings.EMAIL_TRANSPORT).send_messages([m]))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **stub.env()}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert [request.json["Subject"] for request in stub.requests] == ["From a worker"]


def test_the_fixture_points_the_transport_setting_at_the_stub(postmark_stub: PostmarkStub) -> None:
    assert settings.EMAIL_TRANSPORT == POSTMARK_TRANSPORT
    assert settings.ANYMAIL["POSTMARK_API_URL"] == postmark_stub.url
    message = EmailMessage("Hello", "Body", "news@countersign.test", [ANN])
    assert get_connection(settings.EMAIL_TRANSPORT).send_messages([message]) == 1
    assert postmark_stub.posted()[0]["To"] == ANN
