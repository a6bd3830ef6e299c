"""The audit chain's signed anchor outside the database: writing it, reading it, checking by it."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import Error, Warning
from django.core.management import CommandError, call_command

from audit import anchor
from audit.anchor import (
    anchor_chain,
    first_difference_from_anchors,
    latest_signed_head,
    read_anchor_log,
)
from audit.chain import record_audit
from audit.checks import check_anchor_key, check_anchor_key_strength
from audit.models import AuditChainHead, AuditEvent
from audit.tasks import anchor_audit

pytestmark = pytest.mark.django_db


def _events(n: int) -> list[AuditEvent]:
    return [record_audit("test.event", data={"n": i}) for i in range(n)]


def _anchor_file() -> Path:
    return Path(settings.AUDIT_ANCHOR_PATH)


def _lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in _anchor_file().read_text().splitlines() if line.strip()]


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    call_command("verify_audit", *args)
    captured = capsys.readouterr()
    return captured.out, captured.err


def _refused(*args: str) -> str:
    with pytest.raises(CommandError) as refused:
        call_command("verify_audit", *args)
    return str(refused.value)


# --- writing -----------------------------------------------------------------------------


def test_anchor_signs_the_chain_head_and_mirrors_every_link_since_the_last_anchor() -> None:
    events = _events(3)

    assert anchor_chain() == 1

    (line,) = _lines()
    assert (line["seq"], line["hash"]) == (3, events[-1].hash)
    assert (line["first"], line["links"]) == (1, [e.hash for e in events])
    assert line["prev"] == ""
    # Anyone holding the key can check a line with nothing but hmac and json.
    unsigned = {k: v for k, v in line.items() if k != "sig"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    expected = hmac.new(
        settings.AUDIT_ANCHOR_KEY.encode(),
        b"countersign.audit.anchor.v1\n" + canonical,
        hashlib.sha256,
    ).hexdigest()
    assert line["sig"] == expected


def test_anchor_writes_nothing_when_nothing_is_new_and_chains_the_next_line() -> None:
    _events(2)
    anchor_chain()
    assert anchor_chain() == 0
    later = _events(2)

    assert anchor_chain() == 1

    first, second = _lines()
    assert second["prev"] == first["sig"]
    assert (second["first"], second["seq"], second["links"]) == (3, 4, [e.hash for e in later])


def test_a_long_catch_up_is_cut_into_bounded_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anchor, "LINKS_PER_ANCHOR", 3)
    _events(7)

    assert anchor_chain() == 3

    assert [(line["first"], line["seq"]) for line in _lines()] == [(1, 3), (4, 6), (7, 7)]
    assert read_anchor_log().problems == []


def test_an_empty_chain_is_not_anchored() -> None:
    assert anchor_chain() == 0
    assert _anchor_file().read_bytes() == b""


def test_a_torn_last_line_is_reported_and_the_next_anchor_starts_on_a_line_of_its_own() -> None:
    _events(2)
    anchor_chain()
    with _anchor_file().open("ab") as handle:
        handle.write(b'{"v": 1, "seq": 3, "ha')  # a crash in the middle of a write
    _events(1)

    assert anchor_chain() == 1

    text = _anchor_file().read_text().splitlines()
    assert len(text) == 3 and json.loads(text[2])["seq"] == 3
    message = _refused()
    assert "1 line(s) do not verify: line 2: it is not JSON" in message
    assert "line 3 does not follow" not in message


def test_latest_signed_head_is_the_newest_line_for_the_compliance_export() -> None:
    _events(2)
    anchor_chain()
    newest = _events(1)[0]
    anchor_chain()

    head = latest_signed_head()

    assert head is not None
    assert (head["seq"], head["hash"]) == (3, newest.hash)
    assert head == _lines()[-1]


def test_latest_signed_head_is_none_before_any_anchor() -> None:
    assert latest_signed_head() is None


# --- when anchors are written ----------------------------------------------------------


def test_an_approval_event_is_anchored_once_it_commits(
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        event = record_audit("campaign.approved", data={"campaign": 1})
    assert not _anchor_file().exists()  # nothing before the commit

    for callback in callbacks:
        callback()

    assert (_lines()[-1]["seq"], _lines()[-1]["hash"]) == (event.seq, event.hash)


def test_ordinary_events_wait_for_the_periodic_anchor(
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        _events(2)
    assert not _anchor_file().exists()

    assert anchor_audit() == 1  # the beat task

    assert _lines()[-1]["seq"] == 2


def test_a_failed_anchor_after_commit_is_logged_and_the_decision_stands(
    settings: Any,
    django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.AUDIT_ANCHOR_KEY = ""
    with caplog.at_level(logging.ERROR, logger="audit.anchor"):
        with django_capture_on_commit_callbacks(execute=True):
            record_audit("campaign.approved")

    assert AuditEvent.objects.filter(action="campaign.approved").exists()
    assert "periodic anchor retries" in caplog.text
    assert "AUDIT_ANCHOR_KEY" in caplog.text


def test_beat_runs_the_anchor_task_every_interval() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["anchor-audit"]
    assert entry == {
        "task": "countersign.anchor_audit",
        "schedule": settings.AUDIT_ANCHOR_INTERVAL_SECONDS,
    }
    assert anchor_audit.name == "countersign.anchor_audit"


# --- verify_audit --------------------------------------------------------------------------


def test_verify_audit_checks_the_chain_against_its_anchors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _events(4)
    anchor_chain()
    _events(2)

    out, _ = _verify(capsys)

    assert "Audit chain intact: 6 events verified; they agree with 1 signed anchor in" in out
    assert "covers events up to #4" in out
    assert "2 newer events not anchored yet" in out


def test_verify_audit_warns_that_an_unanchored_chain_is_only_checked_against_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _events(2)

    out, err = _verify(capsys)

    assert "Audit chain intact: 2 events verified." in out
    assert "No signed anchor in" in err


def test_verify_audit_reads_the_anchor_file_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _events(3)
    copy = tmp_path / "kept-elsewhere.jsonl"
    anchor_chain(copy)

    out, _ = _verify(capsys, "--anchor-file", str(copy))

    assert f"agree with 1 signed anchor in {copy}" in out


def test_verify_audit_needs_the_key_to_read_anchors(settings: Any) -> None:
    _events(1)
    anchor_chain()
    settings.AUDIT_ANCHOR_KEY = ""

    assert "AUDIT_ANCHOR_KEY (or AUDIT_ANCHOR_KEY_FILE) is not set" in _refused()


def test_anchors_signed_with_another_key_do_not_count(settings: Any) -> None:
    _events(2)
    anchor_chain()
    settings.AUDIT_ANCHOR_KEY = "another-key-entirely-0123456789abcdef"

    message = _refused()

    assert "line 1: its signature does not match" in message


def test_without_a_link_before_it_the_difference_is_named_as_a_window() -> None:
    events = _events(5)
    anchor_chain()
    # The anchors an auditor kept: only the signed head, not the links before it.
    (line,) = _lines()
    sparse = anchor.Anchor(
        seq=line["seq"],
        hash=line["hash"],
        at=line["at"],
        first=5,
        links=(events[-1].hash,),
        prev="",
        sig="",
    )
    assert first_difference_from_anchors([sparse]) is None
    forged = replace(sparse, hash="f" * 64, links=("f" * 64,))

    assert first_difference_from_anchors([forged]) == (
        "Audit chain rewritten: an event between #1 and #5 differs from the anchored chain "
        f"(signed {line['at']}; the anchors record no link in between)."
    )


# --- the key ---------------------------------------------------------------------------------


def test_check_requires_an_anchor_key(settings: Any) -> None:
    settings.AUDIT_ANCHOR_KEY = ""
    (error,) = check_anchor_key()
    assert isinstance(error, Error) and error.id == "audit.E001"
    assert "AUDIT_ANCHOR_KEY (or AUDIT_ANCHOR_KEY_FILE) is required when DEBUG is off" in error.msg


def test_check_refuses_the_secret_key_as_anchor_key(settings: Any) -> None:
    settings.AUDIT_ANCHOR_KEY = settings.SECRET_KEY
    assert [e.id for e in check_anchor_key()] == ["audit.E002"]


def test_deploy_check_warns_about_a_short_anchor_key(settings: Any) -> None:
    settings.AUDIT_ANCHOR_KEY = "short"
    (warning,) = check_anchor_key_strength()
    assert isinstance(warning, Warning) and warning.id == "audit.W001"
    settings.AUDIT_ANCHOR_KEY = "k" * 64
    assert check_anchor_key_strength() == []


def _settings_process(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "s" * 64,
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'check.sqlite3'}",
    }
    code = (
        "import django, sys; django.setup();"
        "from django.conf import settings; from django.core.management import call_command;"
        "print(settings.AUDIT_ANCHOR_KEY == settings.SECRET_KEY, flush=True);"
        "call_command('check')"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_up_checks_fail_without_a_key_unless_debug_derives_one(tmp_path: Path) -> None:
    key_file = tmp_path / "anchor_key"
    key_file.write_text("a" * 64 + "\n")

    missing = _settings_process(tmp_path)
    from_file = _settings_process(tmp_path, AUDIT_ANCHOR_KEY_FILE=str(key_file))
    debug = _settings_process(tmp_path, DEBUG="true")

    assert missing.returncode != 0
    assert "audit.E001" in missing.stderr and "AUDIT_ANCHOR_KEY" in missing.stderr
    assert from_file.returncode == 0, from_file.stderr
    # DEBUG's per-checkout key is not SECRET_KEY.
    assert debug.returncode == 0, debug.stderr
    assert debug.stdout.splitlines()[0] == "False"


def test_chain_head_of_an_intact_chain_is_what_gets_signed() -> None:
    _events(3)
    anchor_chain()
    head = AuditChainHead.objects.get(pk=1)
    assert (_lines()[-1]["seq"], _lines()[-1]["hash"]) == (head.seq, head.hash)
