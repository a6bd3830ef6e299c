"""`manage.py seed_demo [--users N]`: demo staff, an awkward audience, a sender and a draft.

Idempotent: a second run changes nothing. Every value is derived from the member's index,
so reruns (and larger --users values) produce exactly the same people.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import events, services
from accounts.importer import ImportReport, MemberRow, import_members
from accounts.models import User
from audit.chain import record_audit
from campaigns.models import Campaign, SenderIdentity

DEFAULT_PASSWORD = "countersign-demo"


@dataclass(frozen=True)
class DemoStaff:
    username: str
    email: str
    first_name: str
    role: str
    superuser: bool = False


DEMO_STAFF = (
    DemoStaff("olivia", "olivia@example.com", "Olivia", "Ops"),
    DemoStaff("oscar", "oscar@example.com", "Oscar", "Ops"),
    DemoStaff("rita", "rita@example.com", "Rita", "Compliance"),
    DemoStaff("root", "root@example.com", "Root", "Admin", superuser=True),
)

LONG_FIRST_NAME = (
    "Maximiliana Alexandrina Konstantina Evangelina Bartholomea Wilhelmina "
    "Friederike Theodora Augustina"
)
LONG_LAST_NAME = "von Hohenzollern-Sigmaringen-Wolfeschlegelsteinhausenbergerdorff"

# The members a careful preview must get right: commas, quotes and semicolons that a
# sloppy header builder turns into extra recipients, names that contain addresses,
# non-Latin scripts (right-to-left too) and names far past any column width.
AWKWARD_MEMBERS: tuple[tuple[str, str, str, str, str], ...] = (
    # (email, first_name, last_name, locale, country)
    ("john.smith@example.com", "Smith, John", "", "en", "US"),
    ("siobhan.obrien@example.org", "Siobhán", "O'Brien", "en-IE", "IE"),
    ("o'connor@example.net", "Pádraig", "O'Connor", "en-IE", "IE"),
    ("jane.jones@example.com", 'Jane "JJ"', "Jones", "en-GB", "GB"),
    ("zoe.muller@example.net", "Zoë", "Müller", "de", "DE"),
    ("lukasz.wisniewski@example.org", "Łukasz", "Wiśniewski", "pl", "PL"),
    ("taro.yamada@example.com", "山田 太郎", "", "ja", "JP"),
    ("ahmed.hassan@example.net", "أحمد", "حسن", "ar", "EG"),
    ("maximiliana@example.org", LONG_FIRST_NAME, LONG_LAST_NAME, "de", "DE"),
    ("robert.b@example.com", "bob@example.net", "", "en", "US"),
    ("eve.adams@example.net", "Eve <eve@example.org>", "", "en", "GB"),
    ("jane.doe@example.com", "Doe; Jane", "", "fr", "FR"),
    ("renee.dubois@example.org", "Renée", "Dubois", "fr", "FR"),
    ("nameless@example.net", "", "", "", "NL"),
)

FIRST_NAMES = (
    "Emma", "Liam", "Sofia", "Noah", "Mia", "Lucas", "Chloé", "Mateo", "Ingrid", "Søren",
    "Aiko", "Hiroshi", "Fatima", "Omar", "Olga", "Piotr", "Ana", "João", "Élodie", "François",
    "Björn", "Ayşe", "Priya", "Kwame", "Małgorzata", "Dmitri", "Chiara", "Seán", "Mei", "Tomás",
)  # fmt: skip
LAST_NAMES = (
    "Johnson", "García", "Müller", "Kowalski", "Dubois", "Tanaka", "Rossi", "Andersson",
    "Novák", "Silva", "Nakamura", "Jensen", "O'Neill", "van der Berg", "Petrović", "Ødegaard",
    "Smith-Jones", "Okafor", "Nguyễn", "Yılmaz", "Fernández", "Kim", "Schröder", "Dąbrowski",
)  # fmt: skip
LOCALES = ("en", "en-GB", "de", "fr", "ja", "pl", "es", "pt-BR", "it", "nl", "ar")
COUNTRIES = ("US", "GB", "DE", "FR", "JP", "PL", "ES", "BR", "IT", "NL", "EG", "IE", "CA")
DOMAINS = ("example.com", "example.org", "example.net")

SENDER = {
    "name": "Countersign Notices",
    "from_name": "Countersign",
    "from_address": "notices@example.com",
    "reply_to": "support@example.com",
    "postal_address": "Countersign Ltd, 1 Example Street, Springfield 12345",
    "message_id_domain": "mail.example.com",
}

CAMPAIGN_NAME = "Quarterly platform update"
SUBJECT_TEMPLATE = 'Your quarterly platform update, {{ first_name|default:"there" }}'
TEXT_TEMPLATE = """\
Hello {{ first_name|default:"there" }},

Here is what changed on the platform this quarter:

- Sign-in is faster, and two-factor authentication is now available on every account.
- Exports now include every field you see on screen.
- Our uptime report for the quarter is published on the status page.

You are on the {{ plan|default:"free" }} plan; nothing changes for you.

Questions? Just reply to this message and a person will answer.

The Countersign team

Unsubscribe: {{ unsubscribe_url }}
Countersign Ltd, 1 Example Street, Springfield 12345
"""
HTML_TEMPLATE = """\
<p>Hello {{ first_name|default:"there" }},</p>
<p>Here is what changed on the platform this quarter:</p>
<ul>
  <li>Sign-in is faster, and two-factor authentication is now available on every account.</li>
  <li>Exports now include every field you see on screen.</li>
  <li>Our uptime report for the quarter is published on the status page.</li>
</ul>
<p>You are on the <strong>{{ plan|default:"free" }}</strong> plan; nothing changes for you.</p>
<p>Questions? Just reply to this message and a person will answer.</p>
<p>The Countersign team</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
<p>Countersign Ltd, 1 Example Street, Springfield 12345</p>
"""


def _ascii_slug(value: str) -> str:
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "", folded.lower())


def demo_member(index: int) -> MemberRow:
    """The demo audience member number `index` (0-based), always the same person."""
    if index < len(AWKWARD_MEMBERS):
        email, first, last, locale, country = AWKWARD_MEMBERS[index]
        plan = "pro" if index % 2 else "free"
        return MemberRow(
            line=index + 1,
            email=email,
            first_name=first,
            last_name=last,
            locale=locale,
            attributes={"plan": plan, "country": country},
        )
    first = FIRST_NAMES[index % len(FIRST_NAMES)]
    last = LAST_NAMES[(index * 7) % len(LAST_NAMES)]
    local = ".".join(part for part in (_ascii_slug(first), _ascii_slug(last)) if part)
    attributes = {"country": COUNTRIES[(index * 5) % len(COUNTRIES)]}
    # Most members have a plan; a few do not, so the template's default is exercised.
    if index % 50 != 7:
        attributes["plan"] = "pro" if index % 4 == 0 else "free"
    return MemberRow(
        line=index + 1,
        email=f"{local}.{index}@{DOMAINS[index % len(DOMAINS)]}",
        # Every 17th member has no first name: the greeting falls back to "there".
        first_name="" if index % 17 == 3 else first,
        last_name=last,
        locale=LOCALES[(index * 3) % len(LOCALES)],
        attributes=attributes,
    )


def demo_members(count: int) -> Iterator[MemberRow]:
    return (demo_member(index) for index in range(count))


class Command(BaseCommand):
    help = "Create demo staff, an audience with awkward names, a sender identity and a draft."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--users", type=int, default=1_000, help="Audience members to seed (default 1,000)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["users"]
        if count < 0:
            raise CommandError("--users must be zero or more.")
        password = os.environ.get("DEMO_PASSWORD") or DEFAULT_PASSWORD

        staff = {person.username: self.ensure_staff(person, password) for person in DEMO_STAFF}
        report = self.seed_audience(count)
        sender, sender_created = SenderIdentity.objects.get_or_create(
            name=SENDER["name"], defaults=SENDER
        )
        campaign_created = self.ensure_campaign(sender, author=staff["olivia"])

        self.stdout.write(
            f"Audience: {report.created} created, {report.updated} updated, "
            f"{report.unchanged} unchanged."
        )
        self.stdout.write(
            f"Sender identity “{sender.name}”: {'created' if sender_created else 'exists'}."
        )
        self.stdout.write(
            f"Campaign “{CAMPAIGN_NAME}”: {'created (draft)' if campaign_created else 'exists'}."
        )
        self.stdout.write("")
        self.stdout.write(f"Logins at /admin/ (password: {password}):")
        for person in DEMO_STAFF:
            role = person.role + (", superuser" if person.superuser else "")
            self.stdout.write(f"  {person.username:<8} {person.email:<22} {role}")

    def ensure_staff(self, person: DemoStaff, password: str) -> User:
        """Create or repair one demo staff member; every change is audited (actor: system).

        The demo is an installation: its first Compliance member (rita) and its superuser
        come from here, as they would from `create_staff` in production, not through grants.
        """
        with transaction.atomic():
            user = User.objects.filter(username=person.username).first()
            if user is None:
                if User.objects.filter(email__iexact=person.email).exists():
                    raise CommandError(
                        f"{person.email} belongs to another account; cannot create "
                        f"{person.username}."
                    )
                user = User(
                    username=person.username,
                    email=person.email,
                    first_name=person.first_name,
                    is_staff=True,
                    is_superuser=person.superuser,
                )
                user.set_password(password)
                return services.create_account(
                    user, by=None, source="seed_demo", roles=[person.role]
                )
            before = User.objects.get(pk=user.pk)
            wanted = {
                "email": person.email,
                "is_staff": True,
                "is_active": True,
                "is_superuser": person.superuser,
            }
            changed = [name for name, value in wanted.items() if getattr(user, name) != value]
            for name in changed:
                setattr(user, name, wanted[name])
            # Only when it differs: hashing is slow on purpose, and a rerun should write nothing.
            if not user.check_password(password):
                user.set_password(password)
                user.attribute_password(None, owner_only=False)
                changed += ["password", "password_set_by", "password_set_at", "password_owner_only"]
                record_audit(
                    events.PASSWORD_SET,
                    obj=user,
                    data={"username": user.username, "via": "seed_demo"},
                )
            if changed:
                user.save(update_fields=changed)
            held = set(user.groups.values_list("name", flat=True))
            if person.role not in held:
                user.groups.add(Group.objects.get(name=person.role))
            services.record_account_changes(
                before, user, held=held, wanted=held | {person.role}, by=None
            )
        return user

    def seed_audience(self, count: int) -> ImportReport:
        report = import_members(
            lambda: demo_members(count), attribute_names=("plan", "country"), source="seed_demo"
        )
        if report.error_count:
            # A staff account with a demo address, say: say so rather than seed half.
            details = "; ".join(f"{e.email}: {e.reason}" for e in report.errors[:5])
            raise CommandError(f"{report.error_count} demo members could not be seeded: {details}")
        return report

    def ensure_campaign(self, sender: SenderIdentity, *, author: User) -> bool:
        with transaction.atomic():
            if Campaign.objects.filter(name=CAMPAIGN_NAME).exists():
                return False
            campaign = Campaign.objects.create(
                name=CAMPAIGN_NAME,
                category=Campaign.Category.ANNOUNCEMENT,
                sender=sender,
                author=author,
                status=Campaign.Status.DRAFT,
                subject_template=SUBJECT_TEMPLATE,
                text_template=TEXT_TEMPLATE,
                html_template=HTML_TEMPLATE,
            )
            campaign.contributors.add(author)
            record_audit(
                "campaign.created", actor=author, obj=campaign, data={"source": "seed_demo"}
            )
        return True
