from __future__ import annotations

from django.contrib.auth.backends import ModelBackend


class UsernameOrEmailBackend(ModelBackend):
    """ModelBackend whose lookup accepts the username or the email (see the manager)."""
