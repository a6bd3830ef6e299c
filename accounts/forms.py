"""Admin forms for users and for the CSV import."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms

from .importer import check_attribute_name
from .models import User


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
    class Meta:
        model = User
        fields = "__all__"
        field_classes = {"username": auth_forms.UsernameField}

    def clean_attributes(self) -> dict[str, str]:
        return clean_attributes_value(self.cleaned_data.get("attributes"))


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
