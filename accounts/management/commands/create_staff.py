"""`manage.py create_staff USERNAME EMAIL --role ROLE ...`: the first accounts, at installation.

The account gets no password: its owner is mailed a link to choose one (through the
guarded mail backend), so nobody at the command line ever knows it. The Compliance role
is given this way only while no active Compliance member exists; after that it takes a
grant in the admin that another Compliance member confirms.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services
from accounts.roles import ROLES


class Command(BaseCommand):
    help = (
        "Create a staff account with roles (e.g. the first Admin and the first Compliance "
        "member); its owner is mailed a link to choose a password."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("email")
        parser.add_argument(
            "--role",
            action="append",
            choices=list(ROLES),
            default=[],
            help="A role to give (repeat for several).",
        )
        parser.add_argument("--first-name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = services.create_staff_account(
                username=options["username"],
                email=options["email"],
                roles=options["role"],
                first_name=options["first_name"],
            )
        except services.AccountRefused as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            problems = "; ".join(f"{name}: {' '.join(m)}" for name, m in exc.message_dict.items())
            raise CommandError(problems) from exc
        try:
            services.send_password_link(
                user, by=None, reason="A Countersign account was created for you"
            )
        except Exception as exc:
            # The account exists whatever the transport raised (SMTP, a provider, the
            # guard): say so, and how to send the link once mail works.
            raise CommandError(
                f"Created {user.username}, but the link could not be mailed ({exc}). Fix the "
                f"mail settings, then run: manage.py send_password_link {user.username}"
            ) from exc
        roles = ", ".join(options["role"]) or "no role"
        self.stdout.write(
            f"Created {user.username} ({roles}). A link to choose a password was sent to "
            f"{user.email}."
        )
