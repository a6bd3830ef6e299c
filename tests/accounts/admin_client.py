"""Driving the user admin as a browser would: log in, read a form, post it back changed."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import forms
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from accounts.models import User


def sign_in(username: str, password: str) -> Client | None:
    """A client signed in through the real login (password check), or None if refused."""
    client = Client()
    return client if client.login(username=username, password=password) else None


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(form: forms.BaseForm) -> dict[str, Any]:
    """What a browser would post back for an unchanged admin form."""
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        value = form.initial.get(name, field.initial)
        if isinstance(field, forms.BooleanField):
            if value:
                data[name] = "on"
        elif isinstance(field, forms.ModelMultipleChoiceField):
            data[name] = [getattr(item, "pk", item) for item in value or []]
        elif isinstance(field, forms.SplitDateTimeField):
            moment = value if isinstance(value, datetime) else None
            data[f"{name}_0"] = moment.strftime("%Y-%m-%d") if moment else ""
            data[f"{name}_1"] = moment.strftime("%H:%M:%S") if moment else ""
        elif isinstance(field, forms.JSONField):
            data[name] = json.dumps(value if value is not None else {})
        elif value is not None:
            data[name] = getattr(value, "pk", value)
    return data


def change_user(client: Client, user: User, **changes: Any) -> Any:
    """Open `user`'s change page and post it back with `changes` (roles by group name)."""
    url = reverse("admin:accounts_user_change", args=[user.pk])
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    data = form_data(page.context["adminform"].form)
    for name, value in changes.items():
        if name == "groups":
            data[name] = list(Group.objects.filter(name__in=value).values_list("pk", flat=True))
        elif value is True:
            data[name] = "on"
        elif value is False:
            data.pop(name, None)
        else:
            data[name] = value
    return client.post(url, data, follow=True)


def add_user(client: Client, username: str, email: str, password: str | None) -> Any:
    """The admin's add form: a usable password the creator chooses, or none."""
    data = {"username": username, "email": email}
    if password is None:
        data["usable_password"] = "false"
    else:
        data.update(usable_password="true", password1=password, password2=password)
    return client.post(reverse("admin:accounts_user_add"), data, follow=True)


def set_password_in_admin(client: Client, user: User, password: str) -> Any:
    url = reverse("admin:auth_user_password_change", args=[user.pk])
    return client.post(
        url,
        {"usable_password": "true", "password1": password, "password2": password},
        follow=True,
    )


def page_messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []
