"""Celery tasks of the audit app."""

from __future__ import annotations

from celery import shared_task

from .anchor import anchor_chain


# Beat runs it every AUDIT_ANCHOR_INTERVAL_SECONDS. Safe to run twice or to miss a run: it
# anchors whatever is not anchored yet, and writes nothing when nothing is new. A refusal
# (the chain no longer continues its anchors) fails the task loudly in the worker's log.
@shared_task(name="countersign.anchor_audit", soft_time_limit=110, time_limit=120)
def anchor_audit() -> int:
    return anchor_chain()
