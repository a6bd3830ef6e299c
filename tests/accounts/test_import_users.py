"""The CSV user import: the importer, the `import_users` command and the admin flow."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import is_password_usable
from django.core import signing
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from accounts import importer
from accounts.admin import IMPORT_TOKEN_SALT, make_import_token
from accounts.importer import (
    ImportFileError,
    ImportReport,
    hashed_member_username,
    import_users_csv,
)
from accounts.models import AudienceAttribute, User
from audit.chain import record_audit
from audit.models import AuditEvent
from tests.conftest import make_staff

pytestmark = pytest.mark.django_db

MESSY_CSV = (
    "email,first_name,last_name,locale,plan\n"  # line 1
    "ann@example.org,Ann,Lee,en,pro\n"  # 2
    "not-an-address,No,At,en,\n"  # 3
    '"a@example.com, b@example.com",Two,People,en,\n'  # 4
    '"""quoted""@example.com",Quoted,Local,en,\n'  # 5
    'smith@example.net,"Smith, John",,en-GB,free\n'  # 6
    "ANN@Example.org,,Lee-Park,,\n"  # 7: duplicate of line 2, later non-empty values win
    'zoe@example.com,Zoë,"Multi\nLine",de,\n'  # 8-9: one record; a line break in a name
    "eve@example.com\r\nbcc@example.com,Eve,,en,\n"  # 10, 11: two records
    "olivia@example.com,Hijack,,en,\n"  # 12: a staff address
    "bad-locale@example.com,Bad,,en us,\n"  # 13
)


def write_csv(tmp_path: Path, content: str | bytes, name: str = "users.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def good_rows_csv(count: int, *, start: int = 0) -> str:
    lines = ["email,first_name,plan"]
    lines += [f"member{i}@example.org,Member {i},free" for i in range(start, start + count)]
    return "\n".join(lines) + "\n"


def error_reasons(report: ImportReport) -> dict[int, str]:
    return {error.line: error.reason for error in report.errors}


# --- the importer -----------------------------------------------------------------------------


def test_messy_file_reports_each_bad_row_by_line_and_imports_the_good_ones(
    tmp_path: Path, olivia: User
) -> None:
    report = import_users_csv(write_csv(tmp_path, MESSY_CSV))

    reasons = error_reasons(report)
    assert set(reasons) == {3, 4, 5, 8, 12, 13}
    assert "exactly one @" in reasons[3]
    assert "','" in reasons[4] and "one bare address" in reasons[4]
    assert "quoted local part" in reasons[5]
    assert reasons[8] == (
        "last_name contains the control character U+000A (line feed) at character 6"
    )
    assert "staff account" in reasons[12]
    assert "locale" in reasons[13]
    # A comma-joined cell never becomes two people.
    assert not User.objects.filter(email__in=["a@example.com", "b@example.com"]).exists()

    assert (report.created, report.updated, report.unchanged) == (4, 0, 0)
    assert report.merged_duplicates == 1
    assert report.error_count == 6
    assert report.rows == 11

    ann = User.objects.get(email__iexact="ann@example.org")
    assert (ann.email, ann.first_name, ann.last_name, ann.locale) == (
        "ann@example.org",
        "Ann",
        "Lee-Park",
        "en",
    )
    assert ann.attributes == {"plan": "pro"}
    assert User.objects.filter(email__iexact="ann@example.org").count() == 1
    assert User.objects.get(email="smith@example.net").first_name == "Smith, John"
    assert User.objects.get(email="eve@example.com").first_name == ""
    assert User.objects.get(email="bcc@example.com").first_name == "Eve"
    olivia.refresh_from_db()
    assert olivia.first_name == "Olivia" and olivia.is_staff
    assert list(AudienceAttribute.objects.values_list("name", flat=True)) == ["plan"]


def test_multiline_cell_keeps_physical_line_numbers_for_later_rows(tmp_path: Path) -> None:
    content = 'email,first_name\nann@example.org,"Ann\nMarie"\nbroken,X\n'
    report = import_users_csv(write_csv(tmp_path, content))

    # Line 2 starts the record; its quoted newline makes it a control-character error.
    assert error_reasons(report) == {
        2: "first_name contains the control character U+000A (line feed) at character 4",
        4: "invalid address: must contain exactly one @",
    }


def test_new_members_are_audience_only_with_unusable_password(tmp_path: Path) -> None:
    long_local = "x" * 64
    long_email = f"{long_local}@{'d' * 60}.{'e' * 60}.example.org"
    assert len(long_email) > 150
    content = f"email\nMixed.Case@Example.org\no'brien@example.org\n{long_email}\n"
    report = import_users_csv(write_csv(tmp_path, content))

    assert report.created == 3
    mixed = User.objects.get(email="Mixed.Case@example.org")
    assert mixed.username == "mixed.case@example.org"
    assert not mixed.is_staff and not mixed.is_superuser and mixed.is_active
    assert not is_password_usable(mixed.password)
    assert User.objects.get(email=long_email).username == hashed_member_username(long_email)
    # An apostrophe is a fine address but not a username the admin form could save.
    assert User.objects.get(email="o'brien@example.org").username.startswith("member-")


def test_existing_members_are_updated_case_insensitively_and_empty_cells_keep_values(
    tmp_path: Path, make_member: Callable[..., User]
) -> None:
    member = make_member(
        "Kim@Example.com", first_name="Kim", last_name="Old", attributes={"plan": "free"}
    )
    content = "email,first_name,last_name,locale,plan,country\nkim@example.COM,,New,fr,pro,FR\n"
    stored_email = member.email
    report = import_users_csv(write_csv(tmp_path, content))

    assert (report.created, report.updated, report.unchanged) == (0, 1, 0)
    member.refresh_from_db()
    assert member.email == stored_email
    assert (member.first_name, member.last_name, member.locale) == ("Kim", "New", "fr")
    assert member.attributes == {"plan": "pro", "country": "FR"}
    assert User.objects.filter(email__iexact="kim@example.com").count() == 1


def test_rerunning_the_same_file_changes_nothing_and_creates_no_duplicates(
    tmp_path: Path,
) -> None:
    path = write_csv(tmp_path, MESSY_CSV.replace("olivia@example.com", "liv@example.com"))
    first = import_users_csv(path, chunk_size=2)
    users_after_first = User.objects.count()
    events_after_first = AuditEvent.objects.count()

    second = import_users_csv(path, chunk_size=2)

    assert first.created == 5
    assert (second.created, second.updated, second.unchanged) == (0, 0, 5)
    assert second.merged_duplicates == first.merged_duplicates == 1
    assert User.objects.count() == users_after_first
    # Nothing written, so nothing audited either.
    assert AuditEvent.objects.count() == events_after_first


def test_rerun_completes_an_import_that_crashed_in_the_middle_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path, good_rows_csv(9))
    real_record_audit = record_audit
    calls = {"n": 0}

    def crash_in_second_chunk(*args: Any, **kwargs: Any) -> Any:
        # Runs inside the chunk's transaction after its rows were inserted: the crash must
        # take those rows with it.
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker died")
        return real_record_audit(*args, **kwargs)

    monkeypatch.setattr(importer, "record_audit", crash_in_second_chunk)
    with pytest.raises(RuntimeError):
        import_users_csv(path, chunk_size=3)

    imported = set(User.objects.values_list("email", flat=True))
    assert imported == {"member0@example.org", "member1@example.org", "member2@example.org"}

    monkeypatch.setattr(importer, "record_audit", real_record_audit)
    report = import_users_csv(path, chunk_size=3)

    assert (report.created, report.unchanged) == (6, 3)
    emails = list(User.objects.values_list("email", flat=True))
    assert sorted(emails) == sorted(f"member{i}@example.org" for i in range(9))
    assert User.objects.get(email="member4@example.org").first_name == "Member 4"


def test_each_chunk_is_a_separate_import_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk_sizes: list[int] = []
    real_import_chunk = importer.import_chunk

    def spy(members: Any, **kwargs: Any) -> Any:
        chunk_sizes.append(len(members))
        return real_import_chunk(members, **kwargs)

    monkeypatch.setattr(importer, "import_chunk", spy)
    import_users_csv(write_csv(tmp_path, good_rows_csv(7)), chunk_size=3)

    assert chunk_sizes == [3, 3, 1]
    assert AuditEvent.objects.filter(action="users.imported").count() == 3


def test_duplicates_across_chunks_are_merged_and_counted_the_same_in_a_dry_run(
    tmp_path: Path,
) -> None:
    content = (
        "email,first_name,plan\n"
        "a@example.org,A,free\n"
        "b@example.org,B,\n"
        "c@example.org,C,\n"
        "A@EXAMPLE.ORG,,pro\n"  # next chunk: updates the row the first chunk created
        "b@example.org,Bee,\n"
    )
    path = write_csv(tmp_path, content)
    dry = import_users_csv(path, dry_run=True, chunk_size=3)
    real = import_users_csv(path, chunk_size=3)

    for report in (dry, real):
        assert (report.created, report.updated, report.unchanged) == (3, 0, 0)
        assert report.merged_duplicates == 2
    a = User.objects.get(email="a@example.org")
    assert (a.first_name, a.attributes) == ("A", {"plan": "pro"})
    assert User.objects.get(email="b@example.org").first_name == "Bee"
    assert User.objects.count() == 3


def test_dry_run_counts_without_writing(tmp_path: Path, make_member: Callable[..., User]) -> None:
    make_member("same@example.org", first_name="Same")
    make_member("old@example.org", first_name="Old")
    content = (
        "email,first_name,tier\n"
        "same@example.org,Same,\n"
        "old@example.org,New,\n"
        "new@example.org,Fresh,gold\n"
        "NEW@example.org,,\n"
        "broken,,\n"
    )
    before = list(User.objects.order_by("pk").values_list("email", "first_name", "attributes"))

    report = import_users_csv(write_csv(tmp_path, content), dry_run=True)

    assert report.dry_run
    assert (report.created, report.updated, report.unchanged) == (1, 1, 1)
    assert (report.merged_duplicates, report.error_count) == (1, 1)
    after = list(User.objects.order_by("pk").values_list("email", "first_name", "attributes"))
    assert after == before
    assert not AudienceAttribute.objects.exists()
    assert not AuditEvent.objects.filter(action="users.imported").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The file is empty"),
        (b"\n\n", "The file is empty"),
        (b"first_name,last_name\nAnn,Lee\n", "no \u201cemail\u201d column"),
        (b"email;first_name\nann@example.org;Ann\n", "separated by ';'"),
        (b"email,Plan Type\nann@example.org,pro\n", "'plan type' must be lower-case"),
        (b"email,unsubscribe_url\nann@example.org,x\n", "reserved placeholder name"),
        (b"email,email\nann@example.org,a@example.org\n", "appears twice"),
        (b"email,\nann@example.org,\n", "column 2 '' has no name"),
        (b'email,first_name\nann@example.org,"Ann\n', "not a readable CSV file"),
        (b'email,first_name\nann@example.org,"Ann"x\n', "not a readable CSV file"),
    ],
)
def test_per_file_errors_are_refused_with_a_clear_message(
    tmp_path: Path, content: bytes, message: str
) -> None:
    with pytest.raises(ImportFileError) as caught:
        import_users_csv(write_csv(tmp_path, content))
    assert message in str(caught.value)
    assert not User.objects.exists()


def test_non_utf8_file_names_line_and_byte_and_writes_nothing(tmp_path: Path) -> None:
    content = (good_rows_csv(4) + "zoe@example.com,Zo\xeb,free\n").encode("latin-1")
    path = write_csv(tmp_path, content)
    offset = content.index(b"\xeb") + 1

    with pytest.raises(ImportFileError) as caught:
        # Chunks of one row: the bad byte is far past the first commit point.
        import_users_csv(path, chunk_size=1)

    assert f"line 6, byte {offset}" in str(caught.value)
    assert "not UTF-8" in str(caught.value)
    assert not User.objects.exists()
    with pytest.raises(ImportFileError):
        import_users_csv(path, dry_run=True)


def test_utf8_byte_order_mark_and_capitalised_header_are_accepted(tmp_path: Path) -> None:
    report = import_users_csv(
        write_csv(tmp_path, b"\xef\xbb\xbfEmail, First_Name\nzoe@example.com,Zo\xc3\xab\n")
    )
    assert report.created == 1
    assert User.objects.get(email="zoe@example.com").first_name == "Zoë"


def test_extra_cells_beyond_the_header_are_a_row_error(tmp_path: Path) -> None:
    content = "email,first_name\nann@example.org,Ann,surprise\nbob@example.org,Bob,\n"
    report = import_users_csv(write_csv(tmp_path, content))
    assert error_reasons(report) == {2: "has 3 cells, the header has 2"}
    assert list(User.objects.values_list("email", flat=True)) == ["bob@example.org"]


def test_error_list_is_capped_but_every_error_is_counted(tmp_path: Path) -> None:
    content = "email\n" + "broken\n" * (importer.MAX_STORED_ERRORS + 5) + "ok@example.org\n"
    report = import_users_csv(write_csv(tmp_path, content))
    assert report.error_count == importer.MAX_STORED_ERRORS + 5
    assert len(report.errors) == importer.MAX_STORED_ERRORS
    assert report.errors_not_listed == 5
    assert report.created == 1


# --- the command ---------------------------------------------------------------------------------


def run_command(*args: Any, **options: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_users", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_command_imports_and_prints_errors_with_line_numbers(tmp_path: Path) -> None:
    out, err = run_command(str(write_csv(tmp_path, MESSY_CSV)))

    assert "created            5" in out
    assert "duplicates merged  1" in out
    assert "line 4: 'a@example.com, b@example.com': invalid address" in err
    assert "line 5:" in err and "quoted local part" in err
    assert User.objects.get(email="smith@example.net").first_name == "Smith, John"


def test_command_dry_run_writes_nothing(tmp_path: Path) -> None:
    out, _ = run_command(str(write_csv(tmp_path, good_rows_csv(3))), "--dry-run")
    assert "Dry run" in out and "created            3" in out
    assert not User.objects.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"name\nAnn\n", "no \u201cemail\u201d column"),
        (b"email\nzo\xeb@example.com\n", "not UTF-8: line 2"),
    ],
)
def test_command_fails_on_per_file_errors(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run_command(str(write_csv(tmp_path, content)))


def test_command_refuses_missing_file_and_bad_chunk_size(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no such file"):
        run_command(str(tmp_path / "missing.csv"))
    with pytest.raises(CommandError, match="--chunk-size"):
        run_command(str(write_csv(tmp_path, good_rows_csv(1))), "--chunk-size", "0")


# --- the admin flow -------------------------------------------------------------------------------


@pytest.fixture
def imports_var(settings: Any, tmp_path: Path) -> Path:
    settings.VAR_DIR = tmp_path / "var"
    return tmp_path / "var" / "imports"


def logged_in(user: User, *, enforce_csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client


def upload(client: Client, content: str | bytes, name: str = "people.csv") -> Any:
    data = content.encode("utf-8") if isinstance(content, str) else content
    file = io.BytesIO(data)
    file.name = name
    return client.post(reverse("admin:accounts_user_import"), {"csv_file": file})


def test_changelist_offers_import_to_user_admins(root: User, mallory: User) -> None:
    response = logged_in(root).get(reverse("admin:accounts_user_changelist"), {"q": "root"})
    assert response.status_code == 200
    assert reverse("admin:accounts_user_import") in response.content.decode()


def test_a_permission_granted_one_by_one_opens_no_user_admin(mallory: User) -> None:
    # Roles are groups defined in code: a direct grant (from a shell, an old admin) counts
    # for nothing, in the admin as in Countersign's own checks.
    mallory.user_permissions.add(*_view_user_permission())
    response = logged_in(mallory).get(reverse("admin:accounts_user_changelist"))
    assert response.status_code == 403


def _view_user_permission() -> list[Any]:
    from django.contrib.auth.models import Permission

    return list(Permission.objects.filter(codename="view_user"))


def test_admin_upload_shows_dry_run_then_confirm_imports(root: User, imports_var: Path) -> None:
    client = logged_in(root)
    response = upload(client, MESSY_CSV)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing has been written yet" in page
    assert "quoted local part" in page
    assert not User.objects.filter(email="ann@example.org").exists()
    stored = list(imports_var.iterdir())
    assert len(stored) == 1 and stored[0].name != "people.csv"
    token = response.context["confirm_form"].initial["token"]

    response = client.post(reverse("admin:accounts_user_import_confirm"), {"token": token})

    assert response.status_code == 200
    assert response.context["report"].created == 5
    assert "Import finished" in response.content.decode()
    assert any("5 were created" in str(m) for m in response.context["messages"])
    assert User.objects.filter(email__iexact="ann@example.org").count() == 1
    assert not list(imports_var.iterdir())
    events = AuditEvent.objects.filter(action="users.imported")
    assert sum(event.data["created"] for event in events) == 5
    assert {(event.actor_id, event.data["source"]) for event in events} == {(root.pk, "people.csv")}

    # The same confirmation again finds nothing to run.
    again = client.post(reverse("admin:accounts_user_import_confirm"), {"token": token})
    assert again.status_code == 400
    assert "already imported" in again.content.decode()


def test_admin_group_member_without_superuser_can_import(imports_var: Path) -> None:
    admin_user = make_staff("ada", "Admin")
    client = logged_in(admin_user)
    response = upload(client, good_rows_csv(2))
    token = response.context["confirm_form"].initial["token"]
    client.post(reverse("admin:accounts_user_import_confirm"), {"token": token})
    assert User.objects.filter(email__startswith="member").count() == 2


def test_admin_upload_with_per_file_error_shows_it_and_keeps_nothing(
    root: User, imports_var: Path
) -> None:
    response = upload(logged_in(root), b"name\nAnn\n")
    assert response.status_code == 400
    assert "no \u201cemail\u201d column" in response.content.decode()
    assert not list(imports_var.iterdir())


def test_forged_or_foreign_tokens_are_refused(root: User, imports_var: Path) -> None:
    client = logged_in(root)
    response = upload(client, good_rows_csv(2))
    token = response.context["confirm_form"].initial["token"]
    stored = next(imports_var.iterdir())
    outside = imports_var.parent / "outside.csv"
    outside.write_text(good_rows_csv(1, start=50))
    other_admin = make_staff("ada", "Admin")

    forged_tokens = [
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # tampered signature
        signing.dumps({"file": stored.name, "user": root.pk}, salt="another-salt"),
        signing.dumps({"file": "../outside.csv", "user": root.pk}, salt=IMPORT_TOKEN_SALT),
        signing.dumps({"file": str(outside), "user": root.pk}, salt=IMPORT_TOKEN_SALT),
        make_import_token(stored, user=other_admin, source="x.csv"),  # someone else's report
        "",
    ]
    for forged in forged_tokens:
        response = client.post(reverse("admin:accounts_user_import_confirm"), {"token": forged})
        assert response.status_code == 400, forged
    assert not User.objects.filter(email__startswith="member").exists()
    assert stored.exists()


def test_symlink_out_of_the_imports_folder_is_refused(root: User, imports_var: Path) -> None:
    imports_var.mkdir(parents=True)
    outside = imports_var.parent / "outside.csv"
    outside.write_text(good_rows_csv(1))
    link = imports_var / ("a" * 32 + ".csv")
    link.symlink_to(outside)
    token = make_import_token(link, user=root, source="x.csv")

    response = logged_in(root).post(reverse("admin:accounts_user_import_confirm"), {"token": token})

    assert response.status_code == 400
    assert not User.objects.filter(email__startswith="member").exists()


def test_users_without_the_role_cannot_import(
    olivia: User, mallory: User, root: User, imports_var: Path
) -> None:
    stored_by_root = upload(logged_in(root), good_rows_csv(1))
    token = stored_by_root.context["confirm_form"].initial["token"]
    for user in (olivia, mallory):
        client = logged_in(user)
        assert client.get(reverse("admin:accounts_user_import")).status_code == 403
        assert upload(client, good_rows_csv(1)).status_code == 403
        response = client.post(reverse("admin:accounts_user_import_confirm"), {"token": token})
        assert response.status_code == 403
    anonymous = Client().get(reverse("admin:accounts_user_import"))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    assert not User.objects.filter(email__startswith="member").exists()


def test_confirm_needs_post_and_a_csrf_token(root: User, imports_var: Path) -> None:
    client = logged_in(root)
    token = upload(client, good_rows_csv(1)).context["confirm_form"].initial["token"]
    url = reverse("admin:accounts_user_import_confirm")

    assert client.get(url, {"token": token}).status_code == 405
    strict = logged_in(root, enforce_csrf=True)
    assert strict.post(url, {"token": token}).status_code == 403
    assert not User.objects.filter(email__startswith="member").exists()


def test_user_change_form_refuses_nested_attribute_values(
    root: User, make_member: Callable[..., User]
) -> None:
    member = make_member("nested@example.org")
    url = reverse("admin:accounts_user_change", args=[member.pk])
    client = logged_in(root)
    page = client.get(url)
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and name not in {"groups", "user_permissions", "password"}
    }
    data.update(
        {
            "attributes": '{"plan": {"tier": 1}}',
            "last_login_0": "",
            "last_login_1": "",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        }
    )
    response = client.post(url, data)
    assert response.status_code == 200
    assert "must be a string" in response.content.decode()
    member.refresh_from_db()
    assert member.attributes == {}
