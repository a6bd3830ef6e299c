"""Issue 8, point 9 (person data): the admin user form took what the import refuses.

CR/LF in names and attribute values, and bidi overrides (U+202E) in names, were accepted
by the admin and later sent. Every way person data enters now uses the one rule,
`accounts.validators.person_text_error`, and says which field and which character.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from accounts.importer import import_users_csv
from accounts.models import User
from audit.models import AuditEvent
from tests.accounts.admin_client import add_user, change_user, signed_in

pytestmark = pytest.mark.django_db

HOSTILE = {
    "first_name": ("Ann\r\nBcc: all@example.org", "U+000D (carriage return)"),
    "last_name": ("Lee\u202egpj.exe", "U+202E (right-to-left override)"),
    "locale": ("en\nBcc", "U+000A (line feed)"),
    "time_zone": ("Europe/Berlin\u200b", "U+200B (zero width space)"),
}


@pytest.mark.parametrize("field", list(HOSTILE))
def test_admin_user_form_refuses_hostile_text_naming_field_and_character(
    field: str, root: User, make_member: Callable[..., User]
) -> None:
    member = make_member("ann@example.org", first_name="Ann")
    value, character = HOSTILE[field]
    response = change_user(signed_in(root), member, **{field: value})
    page = response.content.decode()
    assert response.status_code == 200
    assert character in page
    member.refresh_from_db()
    assert getattr(member, field) == {"first_name": "Ann"}.get(field, "")
    assert not AuditEvent.objects.filter(action="user.changed").exists()


def test_admin_user_form_refuses_a_bidi_override_in_an_attribute_value(
    root: User, make_member: Callable[..., User]
) -> None:
    member = make_member("ann@example.org", attributes={"plan": "pro"})
    response = change_user(signed_in(root), member, attributes='{"plan": "pro\\u202e"}')
    page = response.content.decode()
    assert "the value of &#x27;plan&#x27; contains the invisible character U+202E" in page
    member.refresh_from_db()
    assert member.attributes == {"plan": "pro"}


def test_admin_refuses_invisible_characters_in_seed_and_account_addresses(
    root: User, olivia: User
) -> None:
    admin = signed_in(root)
    page = change_user(admin, olivia, seed_addresses="olivia@exa\u200bmple.com").content.decode()
    assert "U+200B (zero width space)" in page
    page = add_user(admin, "mallet", "mallet@exam\u202eple.com", None).content.decode()
    assert "U+202E (right-to-left override)" in page
    olivia.refresh_from_db()
    assert olivia.seed_addresses == ""
    assert not User.objects.filter(username="mallet").exists()


def test_import_refuses_the_same_characters_by_line(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        "email,first_name,last_name,plan\n"
        "ann@example.org,Ann,Lee\u202egpj,pro\n"
        "bob@example.org,Bob,Ray,pro\u200b\n"
        "cid@example.org,Cid,Fox,free\n",
        encoding="utf-8",
    )
    report = import_users_csv(path)
    reasons = {error.line: error.reason for error in report.errors}
    assert reasons == {
        2: "last_name contains the invisible character U+202E (right-to-left override) "
        "at character 4",
        3: "plan contains the invisible character U+200B (zero width space) at character 4",
    }
    assert list(User.objects.values_list("email", flat=True)) == ["cid@example.org"]
