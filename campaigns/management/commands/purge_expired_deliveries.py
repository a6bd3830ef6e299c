"""`python manage.py purge_expired_deliveries`: apply the retention policy (RETENTION_DAYS).

Deletes the deliveries and provider events of campaigns that ended longer ago than the
policy, keeping what an approval still needs; every campaign's purge is an audit event.
Approvals and audit events are never deleted.
"""

from __future__ import annotations

import getpass
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from campaigns.models import Campaign
from campaigns.retention import PurgeRefused, purge_campaign, purge_expired, retention_cutoff


class Command(BaseCommand):
    help = "Delete deliveries and provider events older than RETENTION_DAYS (audited)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--campaign", type=int, help="Only this campaign; refused if it may not go."
        )
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            account = getpass.getuser()
        except (KeyError, OSError):
            account = "unknown account"
        actor = f"manage.py ({account})"
        dry_run: bool = options["dry_run"]
        verb = "Would purge" if dry_run else "Purged"
        if options["campaign"] is not None:
            campaign = Campaign.objects.filter(pk=options["campaign"]).first()
            if campaign is None:
                raise CommandError(f"No campaign with id {options['campaign']}.")
            try:
                result = purge_campaign(
                    campaign, by=actor, cutoff=retention_cutoff(), dry_run=dry_run
                )
            except PurgeRefused as refused:
                raise CommandError(str(refused)) from None
            self.stdout.write(
                f"{verb} campaign #{campaign.pk}: {result.deliveries} deliveries, "
                f"{result.provider_events} provider events; kept {result.kept}."
            )
            return
        report = purge_expired(by=actor, dry_run=dry_run)
        self.stdout.write(f"Cutoff: {report.cutoff.isoformat()}")
        for item in report.purged:
            self.stdout.write(
                f"{verb} campaign #{item.campaign_id}: {item.deliveries} deliveries, "
                f"{item.provider_events} provider events; kept {item.kept}."
            )
        for message in report.refused.values():
            self.stdout.write(f"Kept: {message}")
        self.stdout.write(
            f"{verb} {report.unmatched_provider_events} provider events matching no delivery."
        )
