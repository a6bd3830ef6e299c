"""Public one-click unsubscribe (RFC 8058)."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse


def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    raise Http404("Unsubscribe is not available yet.")
