from __future__ import annotations

from django.urls import path

from . import views

app_name = "campaigns"
urlpatterns = [
    path("u/<str:token>/", views.unsubscribe, name="unsubscribe"),
]
