"""The short chaos run: 2,000 recipients, two SIGKILLs, a pause and a resume (bench/chaos.py).

The full run (20,000 recipients, five kills, a Redis restart) is `bench/chaos.py`; this one
runs in `make test` when the suite is on PostgreSQL and Redis. It does not restart Redis:
the broker here is a shared server, and restarting it is the bench's job, on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from bench.chaos import ChaosPlan, ChaosReport, check, make_campaign_sending, run_chaos
from tests.smtp_sink import SmtpSink

if TYPE_CHECKING:
    from tests.workers import CeleryWorkers, WorkerProcess


pytest_plugins = ["tests.workers"]

LEASE_SECONDS = 15


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def workers(smtp_sink: SmtpSink, celery_workers: CeleryWorkers) -> CeleryWorkers:
    # After the sink: the workers stop before it closes.
    return celery_workers


@pytest.mark.worker
@pytest.mark.needs_postgres
@pytest.mark.needs_redis
@pytest.mark.django_db(transaction=True)
def test_two_kills_and_a_pause_lose_nothing_and_duplicate_nothing_unflagged(
    smtp_sink: SmtpSink, workers: CeleryWorkers, settings: Any
) -> None:
    settings.SEND_RATE_PER_SECOND = 100_000.0
    settings.SEND_BURST = 1000
    settings.SEND_PARALLEL_BATCHES = 2
    env = {
        **smtp_sink.env(),
        "CLAIM_LEASE_SECONDS": str(LEASE_SECONDS),
        "SEND_RATE_PER_SECOND": "100000",
        "SEND_BURST": "1000",
        "SEND_PARALLEL_BATCHES": "2",
    }

    def start(name: str) -> WorkerProcess:
        return workers(name=name, extra_env=env, ready_timeout=None)

    report = run_chaos(
        ChaosPlan(recipients=2000, kills=2, redis_restart=False, seed=7, lease_seconds=15),
        sink=smtp_sink,
        start_worker=start,
        restart_redis=None,
        tag="ci",
        log=lambda line: print(line),
    )
    print(report.table())
    assert report.kills == 2 and report.pauses == 1, report.table()
    assert report.ok, report.table()
    assert report.lost == 0 and report.duplicates_unflagged == 0
    assert report.messages >= 2000 - report.deliveries["unknown"], report.table()


@pytest.mark.django_db
def test_the_checker_names_a_lost_a_duplicated_and_a_misaddressed_message(
    smtp_sink: SmtpSink,
) -> None:
    """The checker can fail: fed a ledger and a sink that disagree, it counts each fault."""
    from django.core.mail import EmailMessage, get_connection

    from campaigns.models import Delivery

    campaign = make_campaign_sending(4, "checker")
    rows = list(Delivery.objects.filter(campaign=campaign).order_by("pk"))
    Delivery.objects.filter(campaign=campaign).update(status=Delivery.Status.SENT)
    for index, delivery in enumerate(rows):
        Delivery.objects.filter(pk=delivery.pk).update(message_id=f"<d{index}@chaos.test>")
    connection = get_connection(
        "django.core.mail.backends.smtp.EmailBackend", host="127.0.0.1", port=smtp_sink.port
    )

    def deliver(to: str, message_id: str) -> None:
        message = EmailMessage("s", "b", "from@example.com", [to], connection=connection)
        message.extra_headers["Message-ID"] = message_id
        connection.send_messages([message])

    deliver(rows[0].address, "<d0@chaos.test>")  # fine
    deliver(rows[1].address, "<d1@chaos.test>")  # sent twice, not flagged
    deliver(rows[1].address, "<d1@chaos.test>")
    deliver(rows[0].address, "<d2@chaos.test>")  # delivery 2's message to someone else
    # delivery 3: marked sent, never arrived
    report = check(campaign.pk, smtp_sink, ChaosReport(recipients=4))
    assert (report.duplicates_unflagged, report.mismatched, report.lost) == (1, 1, 1)
    assert not report.ok
