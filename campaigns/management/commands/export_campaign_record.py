"""`python manage.py export_campaign_record ID`: the campaign's compliance record, for an auditor.

Writes record.json and deliveries.csv into a directory (or one .zip), records the export in the
audit chain and embeds the signed chain head. scripts/verify_record.py checks it offline.
"""

from __future__ import annotations

import getpass
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.anchor import AnchorRefused
from campaigns.models import Campaign
from campaigns.record import write_campaign_record, write_record_zip


class Command(BaseCommand):
    help = (
        "Export a campaign's compliance record (JSON + deliveries CSV), sealed in the audit chain."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("campaign_id", type=int)
        parser.add_argument(
            "--out",
            type=Path,
            default=None,
            help="A directory to write into, or a path ending in .zip "
            "(default: ./campaign-ID-record/).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        campaign = Campaign.objects.filter(pk=options["campaign_id"]).first()
        if campaign is None:
            raise CommandError(f"No campaign with id {options['campaign_id']}.")
        out: Path = options["out"] or Path(f"campaign-{campaign.pk}-record")
        # The command line has no Countersign user: the audit names the shell account.
        try:
            account = getpass.getuser()
        except (KeyError, OSError):
            account = "unknown account"
        actor = f"manage.py ({account})"
        try:
            if out.suffix == ".zip":
                with out.open("wb") as target:
                    summary = write_record_zip(campaign, by=actor, target=target)
            else:
                summary = write_campaign_record(campaign, by=actor, directory=out)
        except AnchorRefused as refused:
            # Signing this chain would bless a forgery: say so, export nothing signed.
            raise CommandError(
                f"The audit chain does not continue its signed anchors ({refused}); run "
                "`manage.py verify_audit` to see where. Nothing was exported."
            ) from None
        self.stdout.write(
            f"Wrote {out}: {summary.deliveries} deliveries, {summary.provider_events} provider "
            f"events, audit events up to #{summary.signed_head_seq} (signed head), sealed by "
            f"event #{summary.export_event_seq}.\n"
            f"Verify it with: python3 scripts/verify_record.py {out}"
        )
