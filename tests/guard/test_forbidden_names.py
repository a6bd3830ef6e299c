"""Nobody but the guard may name merge attributes, cc or bcc."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db


# --- nobody else may name merge attributes, cc or bcc --------------------------------------

FORBIDDEN_NAMES = re.compile(
    r"\bmerge_(?:data|metadata|headers|global_data)\b|\bb?cc\s*=(?!=)|\.b?cc\b"
)
# The guard is the one place that names them: to refuse them.
ALLOWED_DIR = Path("campaigns/guard")
SKIPPED_DIRS = {".venv", "var", "tests", "node_modules", "staticfiles", ".git"}


def test_no_other_code_names_merge_attributes_cc_or_bcc() -> None:
    root = Path(settings.BASE_DIR)
    offenders = []
    scanned = 0
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if SKIPPED_DIRS & set(relative.parts) or relative.is_relative_to(ALLOWED_DIR):
            continue
        scanned += 1
        for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            if FORBIDDEN_NAMES.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert scanned > 10  # the walk really covered the project
    assert offenders == []


@pytest.mark.parametrize(
    "line",
    ["message.merge_data = {}", "EmailMessage(cc=[x])", "msg.bcc.append(x)", "bcc = []", "m.cc"],
)
def test_the_forbidden_names_pattern_catches_what_it_should(line: str) -> None:
    assert FORBIDDEN_NAMES.search(line)


@pytest.mark.parametrize("line", ["success = True", "if acc == 1:", "x.accent", "bcc == y"])
def test_the_forbidden_names_pattern_ignores_lookalikes(line: str) -> None:
    assert not FORBIDDEN_NAMES.search(line)
