"""Seed addresses: a few active staff addresses, or an internal test domain's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import User
from accounts.seeds import seed_address_problems, seed_lines
from tests.conftest import make_staff

pytestmark = pytest.mark.django_db


def test_staff_addresses_in_any_case_are_fine(olivia: User, oscar: User) -> None:
    assert seed_address_problems(["OLIVIA@example.com", oscar.email]) == []


def test_an_internal_domain_admits_addresses_without_an_account(settings: Any) -> None:
    settings.TEST_SEND_INTERNAL_DOMAINS = ["Staff.Example.com"]
    assert seed_address_problems(["phone@staff.example.com"]) == []
    [problem] = seed_address_problems(["phone@sub.staff.example.com"])
    assert "nor in an internal test domain (staff.example.com)" in problem


def test_each_problem_names_its_address(
    olivia: User, make_member: Callable[..., User], settings: Any
) -> None:
    settings.TEST_SEND_MAX_SEEDS = 3
    make_member("ann@example.org")
    make_staff("gone", is_active=False)
    problems = seed_address_problems(
        ["ann@example.org", "gone@example.com", "who@example.net", "a@b@example.com"]
    )
    assert problems == [
        "At most 3 seed addresses are allowed; there are 4.",
        "“a@b@example.com” must contain exactly one @.",
        "“ann@example.org” belongs to an audience member: test sends go to staff only.",
        "“gone@example.com” belongs to a deactivated staff account.",
        "“who@example.net” is not the address of an active staff account.",
    ]


def test_seed_lines_skip_blank_lines_and_spaces() -> None:
    assert seed_lines(" a@example.com \n\n b@example.com\r\n") == ["a@example.com", "b@example.com"]


def test_seeds_are_checked_in_one_query(olivia: User, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        seed_address_problems([f"s{i}@example.com" for i in range(5)])
