"""Values from the audit chain as a person reads them, not as Python prints them."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.dateparse import parse_datetime
from django.utils.timezone import localtime

register = template.Library()


@register.filter
def for_people(value: Any) -> str:
    """`['a@x']` -> `a@x`; `None` -> `—`; `[old, new]` stays a list; dicts read `key: value`."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(for_people(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {for_people(v)}" for k, v in value.items()) or "none"
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and "T" in value[:11]:
        moment = parse_datetime(value)
        if moment is not None and moment.tzinfo is not None:
            return f"{localtime(moment):%Y-%m-%d %H:%M:%S}"
    return str(value)


@register.filter
def label(key: str) -> str:
    """`recipients_count` -> `recipients count`."""
    return str(key).replace("_", " ")
