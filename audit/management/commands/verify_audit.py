"""`python manage.py verify_audit`: check the audit chain, inside and against its signed anchors.

Inside the database, every link is recomputed (`first_broken_link`): that finds a row that
was edited, removed from the middle, or a head that disagrees with the events. Against the
anchors (`audit.anchor`), it finds what the database alone cannot: a tail deleted with the
head rewound, and an event rewritten with every later hash recomputed.
"""

from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from audit.anchor import anchor_path, first_difference_from_anchors, read_anchor_log
from audit.chain import first_broken_link
from audit.models import AuditChainHead


class Command(BaseCommand):
    help = (
        "Recompute the audit chain and check it against its signed anchors; exit non-zero "
        "naming the first event that does not hold."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--anchor-file",
            type=Path,
            default=None,
            help="The anchor log to check against (default: AUDIT_ANCHOR_PATH), e.g. a copy "
            "kept elsewhere or the signed heads of compliance exports.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        problems: list[str] = []
        broken = first_broken_link()
        if broken is not None:
            seq, why = broken
            problems.append(f"Audit chain broken at event #{seq}: {why}.")
        try:
            anchors = read_anchor_log(options["anchor_file"] or anchor_path())
        except ImproperlyConfigured as error:
            raise CommandError("\n".join([*problems, str(error)])) from None
        problems.extend(anchors.problems)
        difference = first_difference_from_anchors(anchors.anchors)
        if difference is not None:
            problems.append(difference)
        if problems:
            raise CommandError("\n".join(problems))

        head = AuditChainHead.objects.filter(pk=1).first()
        last = head.seq if head is not None else 0
        newest = anchors.newest
        if newest is None:
            self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {last} events verified."))
            self.stderr.write(
                self.style.WARNING(
                    f"No signed anchor in {anchors.path}: a truncated or consistently rewritten "
                    "chain cannot be told from an intact one until the chain is anchored."
                )
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit chain intact: {last} events verified; they agree with "
                f"{_count(len(anchors.anchors), 'signed anchor')} in {anchors.path} "
                f"(the newest, signed {newest.at}, covers events up to #{newest.seq})."
            )
        )
        if last > newest.seq:
            self.stdout.write(
                f"{_count(last - newest.seq, 'newer event')} not anchored yet (the next anchor "
                "covers them)."
            )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
