from __future__ import annotations

from django.urls import path

from .unsubscribe import unsubscribe

app_name = "campaigns"
urlpatterns = [
    path("u/<str:token>/", unsubscribe, name="unsubscribe"),
]
