"""`manage.py import_users FILE.csv [--dry-run] [--chunk-size N]`: import audience members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.importer import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    ImportFileError,
    ImportReport,
    import_users_csv,
)


class Command(BaseCommand):
    help = (
        "Import audience members from a UTF-8 CSV file with an `email` column and optional "
        "first_name, last_name, locale and attribute columns. Safe to re-run: existing "
        "members are updated, never duplicated."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV file to import.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Validate and count what would change, without writing anything.",
        )
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=DEFAULT_CHUNK_SIZE,
            help=f"Rows per transaction (1 to {MAX_CHUNK_SIZE}, default {DEFAULT_CHUNK_SIZE}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        chunk_size: int = options["chunk_size"]
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise CommandError(f"--chunk-size must be between 1 and {MAX_CHUNK_SIZE}.")
        if not path.is_file():
            raise CommandError(f"{path}: no such file.")
        try:
            report = import_users_csv(path, dry_run=options["dry_run"], chunk_size=chunk_size)
        except ImportFileError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        self.print_report(report)

    def print_report(self, report: ImportReport) -> None:
        title = "Dry run (nothing written)" if report.dry_run else "Import finished"
        self.stdout.write(f"{title}: {report.source}")
        self.stdout.write(f"  rows read          {report.rows}")
        self.stdout.write(f"  created            {report.created}")
        self.stdout.write(f"  updated            {report.updated}")
        self.stdout.write(f"  unchanged          {report.unchanged}")
        self.stdout.write(f"  duplicates merged  {report.merged_duplicates}")
        self.stdout.write(f"  rows with errors   {report.error_count}")
        if report.attributes:
            self.stdout.write(f"  attributes         {', '.join(report.attributes)}")
        for error in report.errors:
            self.stderr.write(f"line {error.line}: {error.email!r}: {error.reason}")
        if report.errors_not_listed:
            self.stderr.write(f"... and {report.errors_not_listed} more rows with errors.")
        if report.error_count:
            self.stdout.write(self.style.WARNING(report.summary()))
        else:
            self.stdout.write(self.style.SUCCESS(report.summary()))
