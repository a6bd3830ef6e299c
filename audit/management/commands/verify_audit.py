"""`python manage.py verify_audit`: recompute the audit hash chain and name the first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.chain import first_broken_link
from audit.models import AuditEvent


class Command(BaseCommand):
    help = "Recompute the audit chain; exit non-zero naming the first broken link."

    def handle(self, *args: Any, **options: Any) -> None:
        total = AuditEvent.objects.count()
        broken = first_broken_link()
        if broken is not None:
            seq, why = broken
            raise CommandError(f"Audit chain broken at event #{seq}: {why}.")
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {total} events verified."))
