"""System checks. The anymail settings check lands with the guarded sender."""

from __future__ import annotations
