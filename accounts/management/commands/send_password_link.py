"""`manage.py send_password_link USERNAME`: mail a staff member a link to choose a password.

The same link an Admin sends from the user page; for when the mail settings were wrong
when `create_staff` ran, or nobody is left who can send one from the admin.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services
from accounts.models import User


class Command(BaseCommand):
    help = "Mail a staff member a link to choose their own password."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No account named {options['username']}.")
        try:
            services.send_password_link(
                user, by=None, reason="Your Countersign administrator sent you this link"
            )
        except services.AccountRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"A link to choose a password was sent to {user.email}.")
