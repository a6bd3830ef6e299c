"""Admin forms for users and for the CSV import.

Person data meets one rule wherever it enters (`validators.person_text_error`, the same
as the CSV import): names, locale, time zone and attribute values are one line of visible
text. Seed addresses follow the test-send rules of `accounts.seeds`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib.auth import forms as auth_forms
from django.http import QueryDict

from .importer import check_attribute_name
from .models import User
from .seeds import seed_address_problems, seed_lines
from .validators import explain_person_text_error

# Text fields of an account that hold person data (an address has its own validator).
PERSON_TEXT_FIELDS = ("first_name", "last_name", "locale", "time_zone")
# What nobody changes on their own account (the admin shows them read-only there).
SELF_LOCKED_FIELDS = ("is_active", "is_staff", "is_superuser", "groups")


def clean_attributes_value(value: Any) -> dict[str, str]:
    """Attributes are flat strings under placeholder-safe names, as the import stores them."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise forms.ValidationError('Enter a JSON object such as {"plan": "pro"}.')
    problems = []
    for name, item in value.items():
        problem = check_attribute_name(name)
        if problem:
            problems.append(f"{name!r} {problem}")
        elif not isinstance(item, str):
            problems.append(f"{name!r} must be a string (use quotes)")
        elif (why := explain_person_text_error(item)) is not None:
            problems.append(f"the value of {name!r} {why}")
    if problems:
        raise forms.ValidationError("; ".join(problems))
    return value


class UserCreationForm(auth_forms.AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("username", "email")
        field_classes = {"username": auth_forms.UsernameField}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every account needs its one address: staff get review mail, members campaigns.
        self.fields["email"].required = True


class UserChangeForm(auth_forms.UserChangeForm[User]):
    # The staff member editing, set by the admin: their own roles and flags are locked.
    editor: ClassVar[User | None] = None

    class Meta:
        model = User
        fields = "__all__"
        field_classes = {"username": auth_forms.UsernameField}

    def clean_attributes(self) -> dict[str, str]:
        return clean_attributes_value(self.cleaned_data.get("attributes"))

    def clean_seed_addresses(self) -> str:
        lines = seed_lines(self.cleaned_data.get("seed_addresses") or "")
        problems = seed_address_problems(lines)
        if problems:
            raise forms.ValidationError(problems)
        return "\n".join(lines)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in PERSON_TEXT_FIELDS:
            value = cleaned.get(name)
            if name in self.fields and isinstance(value, str):
                why = explain_person_text_error(value)
                if why is not None:
                    self.add_error(name, f"{self.fields[name].label} {why}.")
        instance, editor = self.instance, self.editor
        if editor is not None and instance.pk is not None:
            # The admin does not offer these fields here (they are read-only); a crafted
            # request that sends them anyway is refused in words, not silently ignored.
            if instance.pk == editor.pk:
                self._refuse_sent_changes(
                    SELF_LOCKED_FIELDS,
                    "You cannot change your own roles, superuser, staff or active status "
                    "({fields}): another Admin must do it.",
                )
            elif instance.is_protected_account():
                self._refuse_sent_changes(
                    ("email",),
                    f"Only {instance.username} may change the address of a Compliance member "
                    "or superuser: a link to choose a password goes to it.",
                )
        return cleaned

    def _refuse_sent_changes(self, names: tuple[str, ...], message: str) -> None:
        instance = self.instance
        tried = []
        for name in names:
            if name not in self.data or name in self.fields:
                continue
            if name == "groups" and isinstance(self.data, QueryDict):
                sent = {str(pk) for pk in self.data.getlist("groups")}
                held = {str(pk) for pk in instance.groups.values_list("pk", flat=True)}
                changed = sent != held
            elif name == "email":
                changed = str(self.data.get(name, "")).strip().lower() != instance.email.lower()
            else:
                changed = bool(self.data.get(name)) != getattr(instance, name)
            if changed:
                tried.append(name)
        if tried:
            raise forms.ValidationError(message.format(fields=", ".join(tried)))


class ImportUploadForm(forms.Form):
    csv_file = forms.FileField(
        label="CSV file",
        help_text=(
            "UTF-8, comma-separated, first line a header with an “email” column; optional "
            "first_name, last_name, locale and attribute columns (lower-case names)."
        ),
    )


class ImportConfirmForm(forms.Form):
    token = forms.CharField(widget=forms.HiddenInput)
