"""Error pages a person can act on: 403, 404 and 405 in the admin's look, keeping the reason."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string


class MethodNotAllowedPage:
    """Give the empty 405 that `require_POST` and friends return a page that says what to do.

    A GET on an action URL (approve, pause, ...) is someone following a link or retyping
    an address: the buttons on the campaign page are the way to act.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code == 405 and not response.content:
            response.content = render_to_string(
                "405.html",
                {"method": request.method, "allowed": response.get("Allow", "")},
                request=request,
            ).encode()
            response["Content-Type"] = "text/html; charset=utf-8"
        return response
