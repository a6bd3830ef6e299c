"""Public unsubscribe page and RFC 8058 one-click endpoint.

The URL carries a signed token (campaigns.tokens); the token is the recipient's
authorization, so no login is involved.

- GET shows a confirmation form and never changes anything: mail scanners and link
  previewers fetch every URL in a message.
- POST with the body `List-Unsubscribe=One-Click` is what a mail client sends for the
  `List-Unsubscribe-Post` header (RFC 8058). It comes without cookies or a CSRF token, so
  the view is csrf_exempt and that body unsubscribes at once.
- Any other POST is the confirmation form and must pass Django's CSRF check, which this
  view runs itself because the decorator switched the middleware's check off.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .models import Suppression
from .suppressions import add_suppression
from .tokens import InvalidToken, UnsubscribeRequest, read_unsubscribe_token

ONE_CLICK_SOURCE = "one-click"
CONFIRMATION_SOURCE = "confirmation page"


def _is_one_click(request: HttpRequest) -> bool:
    # RFC 8058 section 3.1: the body is exactly this key/value pair, form-encoded
    # (application/x-www-form-urlencoded or multipart/form-data).
    return request.POST.get("List-Unsubscribe") == "One-Click"


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    """Django's own CSRF verdict for this request: None if it passes, else the 403 response."""

    def unused(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
        raise AssertionError("process_view does not call get_response")

    # `callback` is None, so the middleware cannot see this view's csrf_exempt flag and
    # performs the full check (token, and the Origin/Referer checks on https).
    return CsrfViewMiddleware(unused).process_view(request, None, (), {})  # type: ignore[arg-type]


def unsubscribe_address(request: UnsubscribeRequest, *, source: str) -> None:
    """Suppress the token's address for announcements (idempotent, audited when it changes)."""
    where = f"{source}, campaign {request.campaign_id}" if request.campaign_id else source
    add_suppression(request.address, Suppression.Reason.UNSUBSCRIBED, source=where)


@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        unsubscribe_request = read_unsubscribe_token(token)
    except InvalidToken as error:
        return render(request, "campaigns/invalid.html", {"message": str(error)}, status=400)
    if request.method == "POST":
        if _is_one_click(request):
            source = ONE_CLICK_SOURCE
        else:
            refusal = _csrf_failure(request)
            if refusal is not None:
                return refusal
            source = CONFIRMATION_SOURCE
        unsubscribe_address(unsubscribe_request, source=source)
        return render(
            request, "campaigns/unsubscribed.html", {"address": unsubscribe_request.address}
        )
    return render(
        request,
        "campaigns/unsubscribe_confirm.html",
        {"address": unsubscribe_request.address},
    )


@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe_test(request: HttpRequest) -> HttpResponse:
    """The unsubscribe link of a test send: says so and changes nothing, whatever the
    method. CSRF-exempt like the real endpoint, because a mail client's one-click POST
    comes without a token; there is nothing here for a forged request to do."""
    return render(request, "campaigns/unsubscribe_test.html")
