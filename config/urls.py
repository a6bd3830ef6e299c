from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.http import require_GET

from accounts import views as account_views
from campaigns import views as campaign_views
from campaigns.webhooks import PostmarkTrackingView


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for the container health check: the process answers HTTP."""
    return HttpResponse("ok", content_type="text/plain")


def emergency_stop(request: HttpRequest) -> HttpResponse:
    return campaign_views.emergency_stop(request, admin.site.each_context(request))


def second_factor(request: HttpRequest) -> HttpResponse:
    return account_views.second_factor_page(request, admin.site.each_context(request))


urlpatterns = [
    # Before the admin's own catch-all: halts and releases all sending (Admin, Compliance).
    path(
        "admin/campaigns/emergency-stop/",
        admin.site.admin_view(emergency_stop),
        name="campaigns_emergency_stop",
    ),
    # Enrol or verify the second factor (and re-authenticate before approving).
    path(
        "admin/second-factor/",
        admin.site.admin_view(second_factor),
        name="second_factor",
    ),
    path("healthz", healthz, name="healthz"),
    path("", include("campaigns.urls")),
    # Provider tracking webhooks (basic-auth secret from ANYMAIL_WEBHOOK_SECRET). Postmark's
    # is ours first: anymail's own answers a malformed body with a 500.
    path(
        "anymail/postmark/tracking/",
        PostmarkTrackingView.as_view(),
        name="postmark_tracking_webhook",
    ),
    path("anymail/", include("anymail.urls")),
    path("admin/", admin.site.urls),
]
