from __future__ import annotations

from typing import Any

from django import template

from accounts.models import User
from campaigns.dashboard import Home, build_home

register = template.Library()


@register.simple_tag(takes_context=True)
def home_dashboard(context: dict[str, Any]) -> Home | None:
    """The signed-in person's home page data; None for anyone the admin would not show it to."""
    user = context["request"].user
    if not isinstance(user, User) or not user.is_authenticated:
        return None
    return build_home(user)
