"""The transition table is the one statement of a campaign's life, and the README shows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from accounts.models import User
from audit.models import AuditEvent
from campaigns.models import Campaign, IllegalTransition
from campaigns.permissions import PermissionRefused
from campaigns.transitions import TRANSITIONS, transition, transition_if, transitions_markdown
from tests.factories import make_campaign

README_TABLE = re.compile(r"<!-- transitions:start -->\n(.*?)<!-- transitions:end -->", re.DOTALL)


def test_the_readme_shows_the_transition_table_of_the_code() -> None:
    readme = (Path(settings.BASE_DIR) / "README.md").read_text(encoding="utf-8")
    found = README_TABLE.search(readme)
    assert found is not None, "README.md lost its transitions markers"
    assert found.group(1) == transitions_markdown()


def test_every_status_is_reachable_and_every_transition_names_real_states() -> None:
    statuses = set(Campaign.Status.values)
    targets = {t.target for t in TRANSITIONS.values()}
    assert targets | {Campaign.Status.DRAFT} == statuses
    for t in TRANSITIONS.values():
        assert set(t.sources) <= statuses
        assert t.audit.startswith("campaign.")


def test_nothing_leaves_a_cancelled_or_sent_campaign_but_a_reopen() -> None:
    leaving_sent = {t.action for t in TRANSITIONS.values() if Campaign.Status.SENT in t.sources}
    leaving_cancelled = [t for t in TRANSITIONS.values() if Campaign.Status.CANCELLED in t.sources]
    assert leaving_sent == {"reopen"}
    assert leaving_cancelled == []


@pytest.mark.django_db
def test_a_person_transition_checks_role_then_state_and_stamps_who_and_when(
    olivia: User, rita: User
) -> None:
    campaign = make_campaign(olivia)
    with pytest.raises(PermissionRefused), transition(campaign, "pause", by=User()):
        pass
    with pytest.raises(IllegalTransition), transition(campaign, "pause", by=rita):
        pass
    with transition(campaign, "cancel", by=rita) as change:
        change.data["why"] = "test"
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.CANCELLED
    assert campaign.cancelled_by == rita and campaign.cancelled_at is not None
    event = AuditEvent.objects.get(action="campaign.cancelled")
    assert event.actor_id == rita.pk and event.data == {"why": "test"}


@pytest.mark.django_db
def test_a_refusal_inside_the_transition_saves_nothing(olivia: User, rita: User) -> None:
    campaign = make_campaign(olivia)
    with pytest.raises(IllegalTransition), transition(campaign, "cancel", by=rita) as change:
        change.set(pause_reason="half done")
        raise IllegalTransition("changed my mind")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT and campaign.pause_reason == ""
    assert not AuditEvent.objects.filter(action="campaign.cancelled").exists()


@pytest.mark.django_db
def test_a_system_transition_moves_once_and_audits_once(olivia: User) -> None:
    campaign = make_campaign(olivia)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
    assert transition_if(campaign.pk, "complete", data={"sent": 1}) is True
    assert transition_if(campaign.pk, "complete", data={"sent": 1}) is False
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT and campaign.completed_at is not None
    assert AuditEvent.objects.filter(action="campaign.sent").count() == 1
