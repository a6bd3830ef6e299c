from __future__ import annotations

from django.urls import path

from .unsubscribe import unsubscribe, unsubscribe_test

app_name = "campaigns"
urlpatterns = [
    # Before the token route, which would take "test" for a (malformed) token; a real
    # token always holds ":" separators.
    path("u/test/", unsubscribe_test, name="unsubscribe_test"),
    path("u/<str:token>/", unsubscribe, name="unsubscribe"),
]
