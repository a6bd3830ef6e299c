"""The compliance record: exported, sealed in the chain, and verified offline by a stdlib script.

The verifier runs as an auditor would run it: `python -I -S scripts/verify_record.py`, with no
site-packages (so no Django, no Countersign) on its path.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent, chain_hash
from campaigns import services, worker
from campaigns.digests import _canonical_json, content_digest, digest_content, digest_of_content
from campaigns.models import Campaign, Delivery, ProviderEvent
from campaigns.record import audit_event_dict, canonical, write_campaign_record
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

SCRIPT = Path(django_settings.BASE_DIR) / "scripts" / "verify_record.py"


def _verifier_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_record", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fast(settings: Any) -> None:
    settings.SEND_RATE_PER_SECOND = 10_000.0
    settings.SEND_BURST = 10_000
    settings.REDIS_URL = ""


@pytest.fixture
def sent_campaign(
    olivia: User, oscar: User, rita: User, make_member: Callable[..., User]
) -> Campaign:
    for i, name in enumerate(["Smith, John", "Zoë", "山田 太郎", "Ann", "Bob"]):
        make_member(f"m{i}@example.org", first_name=name)
    campaign = make_campaign(olivia)
    campaign.name = "Quarterly update, edited"
    services.edit_campaign(campaign, by=oscar, changed=["name"])
    campaign = services.submit_for_review(campaign, by=oscar)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest, comment="ok")
    services.pause_campaign(campaign, by=rita, reason="checking")
    services.resume_campaign(campaign, by=rita)
    worker.send_batch(campaign.pk, limit=100)
    first = Delivery.objects.filter(campaign=campaign).order_by("pk").first()
    assert first is not None
    ProviderEvent.objects.create(
        provider="postmark",
        event_id="ev-1",
        event_type="delivered",
        recipient=first.address,
        message_id=first.message_id,
        delivery=first,
        payload={"RecordType": "Delivery", "Score": 1.5},
    )
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    return campaign


def run_verifier(path: Path, key: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "")}
    if key:
        env["AUDIT_ANCHOR_KEY"] = django_settings.AUDIT_ANCHOR_KEY
    return subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def export(campaign: Campaign, tmp_path: Path) -> Path:
    out = tmp_path / "record"
    call_command(
        "export_campaign_record", str(campaign.pk), "--out", str(out), stdout=io.StringIO()
    )
    return out


def change_one_byte(path: Path, old: bytes, new: bytes, after: bytes = b"") -> None:
    assert len(old) == len(new)
    raw = path.read_bytes()
    start = raw.index(after) if after else 0
    at = raw.index(old, start)
    path.write_bytes(raw[:at] + new + raw[at + len(old) :])


def test_export_of_a_sent_campaign_verifies_offline(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    result = run_verifier(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout
    record = json.loads((out / "record.json").read_text())
    sections = record["sections"]
    assert sections["campaign"]["author"]["username"] == "olivia"
    assert {p["username"] for p in sections["campaign"]["contributors"]} == {"olivia", "oscar"}
    assert sections["campaign"]["first_sent_at"] and sections["campaign"]["last_sent_at"]
    (approval,) = sections["approvals"]
    assert approval["reviewer"]["username"] == "rita" and approval["samples"]
    assert [a["action"] for a in sections["operator_actions"]] == [
        "campaign.paused",
        "campaign.resumed",
    ]
    assert sections["provider_events"][0]["event_id"] == "ev-1"
    assert sections["deliveries"]["rows"] == 5
    assert record["signed_head"]["seq"] >= record["export_event_seq"]
    exported = AuditEvent.objects.get(seq=record["export_event_seq"])
    assert exported.action == "campaign.record_exported"
    assert exported.actor_label.startswith("manage.py")


def test_without_the_key_the_signature_is_skipped_and_said(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    result = run_verifier(export(sent_campaign, tmp_path), key=False)
    assert result.returncode == 0
    assert "signature was not checked" in result.stdout


def test_one_byte_changed_in_a_sample_message_is_named(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    change_one_byte(out / "record.json", b"Subject: ", b"Subject:_", after=b'"approvals":')
    result = run_verifier(out)
    assert result.returncode == 1
    approval = sent_campaign.approvals.get()
    assert f"approval {approval.pk}, sample 1 (first recipient" in result.stdout
    assert "does not hash to the hash beside it" in result.stdout


def test_a_sample_rehashed_beside_it_is_still_caught_by_the_chain(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    record = json.loads((out / "record.json").read_text())
    sample = record["sections"]["approvals"][0]["samples"][0]
    sample["eml"] = sample["eml"].replace("Subject: ", "Subject:_", 1)
    sample["sha256"] = _verifier_module().sha256(sample["eml"].encode())
    (out / "record.json").write_text(json.dumps(record))
    result = run_verifier(out)
    assert result.returncode == 1
    assert "is not the one the approval's audit event recorded" in result.stdout
    assert "section 'approvals' differs from what the export sealed" in result.stdout


def test_one_byte_changed_in_an_audit_event_is_named(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    change_one_byte(
        out / "record.json",
        b'"action":"campaign.paused"',
        b'"action":"campaign.pauses"',
        after=b'"audit_events"',
    )
    result = run_verifier(out)
    assert result.returncode == 1
    paused = AuditEvent.objects.get(action="campaign.paused")
    assert f"audit event #{paused.seq} (campaign.pauses): its contents do not match its hash" in (
        result.stdout
    )


def test_one_byte_changed_in_a_delivery_outcome_is_named(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    change_one_byte(out / "deliveries.csv", b",sent,", b",semt,")
    result = run_verifier(out)
    assert result.returncode == 1
    assert "deliveries.csv rows 1-5" in result.stdout
    assert "differ from what the export sealed" in result.stdout


def test_changed_content_is_named_with_the_recomputed_digest(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    change_one_byte(out / "record.json", b"Here is what", b"Hera is what", after=b'"content":')
    result = run_verifier(out)
    assert result.returncode == 1
    assert "section 'content' differs" in result.stdout
    assert "the digest recomputed from the content" in result.stdout


def test_a_zip_from_the_campaign_page_verifies_and_the_download_is_audited(
    sent_campaign: Campaign, rita: User, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(rita)
    response = client.get(reverse("admin:campaigns_campaign_record", args=[sent_campaign.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    archive = tmp_path / "record.zip"
    archive.write_bytes(b"".join(response.streaming_content))  # type: ignore[attr-defined]
    assert sorted(zipfile.ZipFile(archive).namelist()) == ["deliveries.csv", "record.json"]
    result = run_verifier(archive)
    assert result.returncode == 0, result.stdout
    exported = AuditEvent.objects.filter(action="campaign.record_exported").get()
    assert exported.actor_label == "rita" and exported.object_id == str(sent_campaign.pk)


def test_staff_without_a_role_cannot_download_the_record(
    sent_campaign: Campaign, mallory: User
) -> None:
    client = Client()
    client.force_login(mallory)
    response = client.get(reverse("admin:campaigns_campaign_record", args=[sent_campaign.pk]))
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(action="campaign.record_exported").exists()


def test_the_verifier_hashes_exactly_as_countersign_does(sent_campaign: Campaign) -> None:
    verify = _verifier_module()
    awkward = {"b": [1, 2.5, None, True], "a": "Zoë \u202e <x@y>", "c": {"é": "山田"}}
    assert verify.canonical(awkward) == _canonical_json(awkward) == canonical(awkward)
    content = json.loads(json.dumps(digest_content(sent_campaign)))
    assert verify.sha256(verify.canonical(content)) == content_digest(sent_campaign)
    assert digest_of_content(content) == sent_campaign.approved_digest
    for event in AuditEvent.objects.order_by("seq"):
        exported = json.loads(json.dumps(audit_event_dict(event)))
        assert (
            verify.event_hash(exported)
            == event.hash
            == chain_hash(
                prev_hash=event.prev_hash,
                seq=event.seq,
                created_at=event.created_at,
                actor_id=event.actor_id,
                actor_label=event.actor_label,
                action=event.action,
                object_type=event.object_type,
                object_id=event.object_id,
                data=event.data,
            )
        )


def test_the_finished_demo_campaign_exports_and_verifies(tmp_path: Path) -> None:
    call_command("seed_demo", users=60, stdout=io.StringIO())
    olivia, rita = User.objects.get(username="olivia"), User.objects.get(username="rita")
    campaign = services.submit_for_review(Campaign.objects.get(), by=olivia)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    while worker.send_batch(campaign.pk, limit=100).sent:
        pass
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    out = export(campaign, tmp_path)
    result = run_verifier(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "record.json").read_text())["sections"]["deliveries"]["rows"] == (
        campaign.recipient_count
    )


def test_an_event_rewritten_with_every_later_hash_recomputed_is_caught_by_the_signed_head(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    out = export(sent_campaign, tmp_path)
    verify = _verifier_module()
    record = json.loads((out / "record.json").read_text())
    events = record["audit_events"]
    paused = next(e for e in events if e["action"] == "campaign.paused")
    paused["data"]["reason"] = "routine"
    previous = None
    for event in events:
        if previous is not None:
            event["prev_hash"] = previous["hash"]
        event["hash"] = verify.event_hash(event)
        previous = event
    (out / "record.json").write_text(json.dumps(record))
    result = run_verifier(out)
    assert result.returncode == 1
    assert f"audit event #{paused['seq']}: its hash is not the one the signed head mirrors" in (
        result.stdout
    )
    assert "its hash is not the one the signed head carries" in result.stdout


def _bulk_deliveries(campaign: Campaign, start: int, count: int) -> None:
    users = User.objects.bulk_create(
        [
            User(username=f"bulk{i}@example.org", email=f"bulk{i}@example.org", password="!")
            for i in range(start, start + count)
        ]
    )
    Delivery.objects.bulk_create(
        [
            Delivery(
                campaign=campaign,
                user=user,
                address=user.email,
                recipient_data={"first_name": "Zoë", "email": user.email},
                status=Delivery.Status.SENT,
                message_id=f"<{user.pk}@mail.example.com>",
            )
            for user in users
        ]
    )


def test_the_export_streams_in_flat_memory(sent_campaign: Campaign, tmp_path: Path) -> None:
    """Four times the deliveries may not take four times the memory: rows stream to disk."""
    import tracemalloc

    def peak(rows: int, out: Path) -> int:
        _bulk_deliveries(sent_campaign, Delivery.objects.count() + 10_000, rows)
        tracemalloc.start()
        try:
            write_campaign_record(sent_campaign, by="test", directory=out)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak(3000, tmp_path / "small")
    large = peak(9000, tmp_path / "large")  # 12,000 in all: four times as many
    assert (
        json.loads((tmp_path / "large" / "record.json").read_text())["sections"]["deliveries"][
            "rows"
        ]
        == 12_005
    )
    assert large < small * 1.5, (small, large)


def test_no_export_is_signed_over_a_chain_rewritten_in_the_database(
    sent_campaign: Campaign, tmp_path: Path
) -> None:
    from tests.hostile.test_audit_anchor import _rewrite

    export(sent_campaign, tmp_path / "first")  # anchors the chain as it stands
    approved = AuditEvent.objects.get(action="campaign.approved")
    _rewrite(approved.seq, {**approved.data, "digest": "0" * 64})
    with pytest.raises(CommandError, match="does not continue its signed anchors"):
        export(sent_campaign, tmp_path / "second")
