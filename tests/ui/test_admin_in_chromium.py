"""The staff journeys in a real browser: compose, submit, review in the sandbox, approve, send.

Each test drives Debian's chromium through Playwright against pytest-django's live server
(so the database is transactional: rows are committed where the server thread sees them)
and saves a full-page screenshot per step under <VAR_DIR>/screenshots/.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.core.management import call_command
from django.urls import reverse
from playwright.sync_api import Frame, Locator, Route, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from accounts.models import User
from campaigns import services
from campaigns.management.commands.seed_demo import CAMPAIGN_NAME
from campaigns.models import Campaign, Delivery, SenderIdentity, SendingSwitch
from tests.factories import HTML, TEXT

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings

    from tests.browser import BrowserPage
    from tests.workers import CeleryWorkers

# Loaded as plugins (not imported) so pytest rewrites their asserts and owns their fixtures.
pytest_plugins = ["tests.browser", "tests.workers"]
# serialized_rollback: the flush after each test would otherwise take the roles (groups that
# a data migration creates) away from every later test in the session.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

DEMO_USERS = 30
# As generous as tests.browser's own (imported only as a plugin, for its asserts).
PAGE_TIMEOUT_MS = 15_000


def seed_demo() -> Campaign:
    call_command("seed_demo", users=DEMO_USERS, stdout=io.StringIO())
    return Campaign.objects.get(name=CAMPAIGN_NAME)


def admin_url(name: str, *args: int) -> str:
    return reverse(f"admin:campaigns_campaign_{name}", args=list(args))


def submit_and_approve_in_browser(browser: BrowserPage, campaign: Campaign) -> None:
    """The demo path: olivia submits the seeded draft, rita reviews it and approves."""
    page = browser.page
    browser.login("olivia")
    browser.goto(reverse("admin:index"))
    expect(page.locator("#my-drafts")).to_contain_text(campaign.name)
    expect(page.locator("#review-queue")).to_have_count(0)
    browser.screenshot("olivia-home")
    browser.goto(admin_url("change", campaign.pk))
    status = page.locator("#campaign-status h2 .cs-badge").first
    expect(status).to_have_text("Draft")
    browser.screenshot("olivia-draft")

    page.get_by_role("button", name="Submit for review").click()
    assert "Submitted for review" in browser.success_message()
    expect(status).to_have_text("In review")
    browser.screenshot("olivia-submitted")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    assert campaign.recipient_count == Delivery.objects.filter(campaign=campaign).count() > 0

    # The author may look at the review screen but is offered no decision.
    page.get_by_role("link", name="Review screen").click()
    expect(page).to_have_url(browser.url(admin_url("review", campaign.pk)))
    expect(page.locator("#decision")).to_be_visible()
    expect(page.locator("#approve-step")).to_have_count(0)
    expect(page.locator("#approve-form")).to_have_count(0)
    browser.screenshot("olivia-review-no-approve")
    # A crafted approve request, with a valid CSRF token, is refused on the server.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    crafted = page.request.post(
        browser.url(admin_url("approve", campaign.pk)),
        form={"csrfmiddlewaretoken": token, "digest": campaign.frozen_digest},
        headers={"X-CSRFToken": token},
    )
    assert crafted.status == 403, crafted.status
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    browser.logout()

    browser.login("rita")
    browser.goto(reverse("admin:index"))
    expect(page.locator("#review-queue-count")).to_have_text("1")
    expect(page.locator("#review-queue")).to_contain_text(campaign.name)
    browser.screenshot("rita-home-queue")
    browser.goto(admin_url("change", campaign.pk))
    browser.screenshot("rita-campaign")
    page.get_by_role("link", name="Review screen").click()
    expect(page).to_have_url(browser.url(admin_url("review", campaign.pk)))
    expect(page.locator("#digest")).to_have_text(campaign.frozen_digest)
    check_samples(browser, campaign)

    checks = page.locator("ul.cs-checks li")
    assert checks.count() >= 5
    for item in checks.all():
        text = item.inner_text().strip()
        # ✘ blocks approval; ⚠ informs (the demo's links are http, not https).
        assert text.startswith(("✔", "⚠")), f"pre-flight check not passed: {text!r}"
        expect(item).to_have_class("cs-ok" if text.startswith("✔") else "cs-warn")
    assert page.locator("ul.cs-checks li.cs-fail").count() == 0
    browser.screenshot("rita-review")
    browser.element_screenshot(page.locator("iframe.cs-html").first, "rita-review-html-part")

    # The decision asks for confirmation, with the count and when sending starts.
    page.locator("#approve-step > summary").click()
    confirm = page.locator("#approve-confirm-text")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text(f"{campaign.recipient_count} message")
    expect(confirm).to_contain_text("as soon as you confirm")
    browser.screenshot("rita-approve-confirmation")
    page.get_by_role(
        "button", name=f"Confirm: approve and send to {campaign.recipient_count}"
    ).click()
    assert "Approved." in browser.success_message()
    browser.screenshot("rita-approved")
    campaign.refresh_from_db()
    assert campaign.status in (Campaign.Status.SENDING, Campaign.Status.SENT)
    assert campaign.approved_by == User.objects.get(username="rita")


def sandboxed_html(frame_element: Locator) -> Frame:
    """The document of a sandboxed HTML part: no allow-scripts, no allow-same-origin."""
    expect(frame_element).to_have_attribute("sandbox", "")
    handle = frame_element.element_handle()
    frame = handle.content_frame() if handle else None
    assert frame is not None, "the HTML iframe has no document"
    frame.wait_for_load_state()
    return frame


def check_samples(browser: BrowserPage, campaign: Campaign) -> None:
    """Each sample, switched to by its tab: "1 recipient", its headers, text and sandboxed HTML."""
    page = browser.page
    tabs = page.locator("nav.cs-tabs a.cs-tab")
    assert tabs.count() >= 2, "the first recipient and at least one more sample"
    addresses = set(Delivery.objects.filter(campaign=campaign).values_list("address", flat=True))
    for index in range(tabs.count()):
        tabs.nth(index).click()
        expect(tabs.nth(index)).to_have_attribute("aria-current", "page")
        sample = page.locator(".cs-sample")
        expect(sample).to_have_count(1)
        expect(sample.locator("tr.cs-to-row .cs-one-recipient")).to_have_text("1 recipient")
        headers = {
            row.locator("th").inner_text().strip(): row.locator("td code.cs-raw")
            .inner_text()
            .strip()
            for row in sample.locator("table.cs-headers tr").all()
        }
        for name in ("From", "To", "Subject", "Message-ID", "List-Unsubscribe"):
            assert headers.get(name), f"header {name} missing from the sample: {headers}"
        to = email.message_from_string(f"To: {headers['To']}\n\n", policy=email.policy.default)
        recipients = [a.addr_spec for a in to["To"].addresses]
        assert len(recipients) == 1 and recipients[0] in addresses, headers["To"]
        assert recipients[0] == sample.get_attribute("data-address")
        expect(sample.locator("pre.cs-text")).to_contain_text("what changed on the platform")

        frame = sandboxed_html(sample.locator("iframe.cs-html"))
        expect(frame.locator("body")).to_contain_text("what changed on the platform")
        browser.screenshot(f"rita-review-sample-{index + 1}")


# --- 1. The review journey ---------------------------------------------------------------------


def test_author_submits_and_a_second_person_approves_in_the_browser(
    browser_page: BrowserPage,
) -> None:
    campaign = seed_demo()
    submit_and_approve_in_browser(browser_page, campaign)
    assert browser_page.errors == [], "\n".join(browser_page.errors)


# --- 2. The sandbox holds -----------------------------------------------------------------------

# Would change the page (ours or its own) if any of it ran. The compose form refuses such
# HTML and the builder strips it, so the test also serves it verbatim in place of the
# preview, under the server's own headers: the sandbox must hold even if both miss.
HOSTILE_HTML = """\
<p id="marker">inert</p>
<script>
  document.getElementById("marker").textContent = "script ran";
  try { parent.document.title = "pwned"; } catch (e) {}
</script>
<img src="data:," onerror="document.getElementById('marker').textContent = 'handler ran'">
"""


def csp_directives(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        tokens = part.split()
        if tokens:
            directives[tokens[0].lower()] = tokens[1:]
    return directives


def test_review_html_runs_no_script_and_is_walled_off_from_the_review_page(
    browser_page: BrowserPage,
) -> None:
    campaign = seed_demo()
    # Straight into the row, past the form that would refuse it: what does the preview do?
    Campaign.objects.filter(pk=campaign.pk).update(
        html_template=HOSTILE_HTML + campaign.html_template
    )
    campaign.refresh_from_db()
    services.submit_for_review(campaign, by=User.objects.get(username="olivia"))

    page = browser_page.page
    browser_page.login("rita")
    browser_page.goto(admin_url("review", campaign.pk))
    iframe = page.locator("iframe.cs-html").first
    src = iframe.get_attribute("src")
    assert src

    # The preview response: the builder stripped the script, and the headers forbid any.
    preview = page.request.get(browser_page.url(src))
    assert preview.ok
    body = preview.text().lower()
    assert "<script" not in body and "onerror" not in body
    assert "what changed on the platform" in body
    csp = csp_directives(preview.headers["content-security-policy"])
    assert csp["sandbox"] == [], "a sandbox token (allow-...) would loosen it"
    assert csp["default-src"] == ["'none'"]
    assert csp.get("script-src", ["'none'"]) == ["'none'"]
    assert preview.headers["x-frame-options"] == "SAMEORIGIN"

    # From the review page the frame is another origin: nothing of it can be read or driven.
    walled = page.evaluate(
        """() => {
            const frame = document.querySelector("iframe.cs-html");
            let access;
            try { access = frame.contentWindow.document ? "readable" : "empty"; }
            catch (error) { access = error.name; }
            return {sandbox: frame.getAttribute("sandbox"),
                    contentDocumentIsNull: frame.contentDocument === null, access};
        }"""
    )
    assert walled == {"sandbox": "", "contentDocumentIsNull": True, "access": "SecurityError"}
    browser_page.screenshot("review-with-hostile-html")

    # Now serve the hostile HTML verbatim, under the server's real preview headers.
    def serve_hostile(route: Route) -> None:
        route.fulfill(response=route.fetch(), body=HOSTILE_HTML)

    preview_urls = re.compile(r"/preview/\d+\.html$")
    page.route(preview_urls, serve_hostile)
    title = page.title()
    page.reload()
    handle = page.locator("iframe.cs-html").first.element_handle()
    frame = handle.content_frame() if handle else None
    assert frame is not None
    # After "load" every inline script and the image's error handler would have run.
    frame.wait_for_load_state("load")
    assert frame.locator("#marker").inner_text() == "inert"
    browser_page.element_screenshot(page.locator("iframe.cs-html").first, "hostile-html-inert")
    assert page.title() == title

    # Opened on its own (no iframe sandbox attribute), the CSP sandbox still holds.
    page.goto(browser_page.url(src), wait_until="load")
    assert page.locator("#marker").inner_text() == "inert"
    browser_page.screenshot("hostile-html-inert-opened-directly")
    page.unroute(preview_urls)

    # Control: the same HTML without our headers does run, so "inert" above means something.
    # (A fresh page: set_content writes into the current document, which keeps its CSP.)
    control = page.context.new_page()
    control.set_content(HOSTILE_HTML)
    expect(control.locator("#marker")).not_to_have_text("inert")


# --- 3. Compose ---------------------------------------------------------------------------------


def test_compose_counts_recipients_live_and_refuses_a_bad_placeholder_with_its_position(
    browser_page: BrowserPage,
) -> None:
    seed_demo()
    sender = SenderIdentity.objects.get()
    members = User.objects.filter(is_staff=False, is_active=True)
    everyone, german = members.count(), members.filter(locale="de").count()
    assert 0 < german < everyone, "the demo audience must make the filter visible"

    page = browser_page.page
    browser_page.login("olivia")
    browser_page.goto(reverse("admin:campaigns_campaign_add"))
    count = page.locator("#id_audience_count")
    expect(count).to_have_value(f"{everyone} recipients")
    page.locator("#id_name").fill("Release notes for German speakers")
    page.locator("#id_sender").select_option(str(sender.pk))
    page.locator("#id_subject_template").fill(
        'Neu auf der Plattform, {{ first_name|default:"du" }}'
    )
    page.locator("#id_text_template").fill(TEXT)
    page.locator("#id_html_template").fill(HTML)
    # Every placeholder is a button that inserts itself where the author was typing.
    subject = page.locator("#id_subject_template")
    subject.click()
    subject.press("End")
    page.locator('button.cs-placeholder[data-insert="{{ last_name }}"]').click()
    expect(subject).to_have_value(
        'Neu auf der Plattform, {{ first_name|default:"du" }}{{ last_name }}'
    )
    subject.fill('Neu auf der Plattform, {{ first_name|default:"du" }}')

    # Typed like a person; the count follows the last keystroke (the request says so).
    with page.expect_response(
        lambda r: "/audience-count/" in r.url and "audience_locale=de&" in r.url
    ) as answer:
        page.locator("#id_audience_locale").press_sequentially("de", delay=50)
    assert answer.value.ok
    expect(count).to_have_value(f"{german} recipients")
    browser_page.screenshot("compose-locale-filter")

    page.get_by_role("button", name="Save and continue editing").click()
    assert "was added successfully" in browser_page.success_message()
    campaign = Campaign.objects.get(name="Release notes for German speakers")
    assert (campaign.author.username, campaign.status) == ("olivia", Campaign.Status.DRAFT)
    assert campaign.audience_locale == "de"
    expect(count).to_have_value(f"{german} recipients")
    browser_page.screenshot("compose-saved")

    # A placeholder that reaches into the model: refused, and the error says where.
    bad_line = "Your account: {{ user.password }}"
    bad_text = f"Hallo,\n\n{bad_line}\n\n" + TEXT
    submit = page.get_by_role("button", name="Submit for review")
    expect(submit).to_be_enabled()
    page.locator("#id_text_template").fill(bad_text)
    # Submit would act on the saved version, not on this edit: it waits for a save.
    expect(submit).to_be_disabled()
    expect(page.locator("#cs-unsaved")).to_be_visible()
    page.get_by_role("button", name="Save and continue editing").click()
    error = page.locator(".field-text_template ul.errorlist")
    expect(error).to_be_visible()
    where = re.search(r"line (\d+), column (\d+)", error.inner_text())
    assert where, error.inner_text()
    start = bad_line.index("{{") + 1
    assert int(where[1]) == 3 and start <= int(where[2]) < start + len("{{ user.password }}")
    browser_page.screenshot("compose-template-error")
    campaign.refresh_from_db()
    assert "password" not in campaign.text_template
    # Still unsaved after the refusal: the server renders the same guard.
    expect(submit).to_be_disabled()
    expect(page.locator("#cs-unsaved")).to_be_visible()
    assert browser_page.errors == [], "\n".join(browser_page.errors)


def test_olivia_composes_with_the_preview_and_submits(browser_page: BrowserPage) -> None:
    campaign = seed_demo()
    # Whom she previews: an audience member with a first name, picked on the server's terms.
    member = (
        User.objects.filter(is_staff=False, is_active=True)
        .exclude(first_name="")
        .order_by("-id")
        .first()
    )
    assert member is not None
    page = browser_page.page
    browser_page.login("olivia")
    browser_page.assert_no_sideways_scroll()  # her home page
    browser_page.goto(admin_url("change", campaign.pk))
    expect(page.locator("#campaign-status h2 .cs-badge").first).to_have_text("Draft")
    expect(page.locator("#compose-preview")).to_be_visible()
    browser_page.screenshot("draft")

    # A placeholder that does not exist: the preview says where, at the field.
    page.locator("#id_subject_template").fill("Platform news for you, {{ frist_name }}")
    with page.expect_response(lambda r: "/compose-preview/" in r.url):
        page.locator("#cs-preview-button").click()
    error = page.locator(".field-subject_template ul.cs-preview-field-errors")
    expect(error).to_contain_text("line 1, column 27")  # where the name starts
    expect(page.locator("#cs-preview-errors")).to_contain_text("frist_name")
    browser_page.screenshot("preview-refuses-a-placeholder")

    subject = 'Platform news for you, {{ first_name|default:"there" }}'
    page.locator("#id_subject_template").fill(subject)
    body = page.locator("#id_text_template")
    body.fill('Hello {{ first_name|default:"there" }},\n\nThe new dashboard is live.\n')
    page.locator("#cs-preview-recipient").fill(member.email)
    browser_page.screenshot("typed")

    with page.expect_response(lambda r: "/compose-preview/" in r.url) as answer:
        page.locator("#cs-preview-button").click()
    assert answer.value.ok
    expect(error).to_have_count(0)
    result = page.locator("#cs-preview-result .cs-preview")
    expect(result).to_have_attribute("data-address", member.email)
    expect(page.locator("#cs-preview-subject")).to_have_text(
        f"Platform news for you, {member.first_name}"
    )
    expect(result.locator("tr.cs-to-row .cs-one-recipient")).to_have_text("1 recipient")
    expect(result.locator("pre.cs-text")).to_contain_text(f"Hello {member.first_name},")
    expect(result.locator("pre.cs-text")).to_contain_text("The new dashboard is live.")
    frame = sandboxed_html(result.locator("iframe.cs-html"))
    expect(frame.locator("body")).to_contain_text(f"Hello {member.first_name},")
    browser_page.screenshot("previewed")
    browser_page.element_screenshot(page.locator("#compose-preview"), "preview-panel")
    # A preview saves nothing: the draft still has the seeded subject.
    assert Campaign.objects.get(pk=campaign.pk).subject_template == campaign.subject_template

    page.get_by_role("button", name="Save and continue editing").click()
    assert "was changed successfully" in browser_page.success_message()
    browser_page.assert_no_sideways_scroll()
    page.get_by_role("button", name="Submit for review").click()
    assert "Submitted for review" in browser_page.success_message()
    expect(page.locator("#campaign-status h2 .cs-badge").first).to_have_text("In review")
    browser_page.screenshot("submitted")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    assert campaign.subject_template == subject
    assert browser_page.errors == [], "\n".join(browser_page.errors)


def test_with_scripts_off_the_preview_button_opens_the_preview_as_a_page(
    browser_page: BrowserPage,
) -> None:
    campaign = seed_demo()
    # The fixture's page runs scripts; this one, in a context of its own, must not.
    chromium = browser_page.page.context.browser
    assert chromium is not None
    context = chromium.new_context(
        viewport=browser_page.page.viewport_size, java_script_enabled=False
    )
    try:
        browser = type(browser_page)(
            page=context.new_page(),
            base_url=browser_page.base_url,
            shot_prefix=browser_page.shot_prefix,
        )
        page = browser.page
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        browser.login("olivia")
        browser.assert_no_sideways_scroll()
        browser.goto(admin_url("change", campaign.pk))
        browser.assert_no_sideways_scroll()
        page.locator("#id_subject_template").fill('Scripts off, {{ first_name|default:"there" }}')
        page.locator("#cs-preview-button").click()
        expect(page).to_have_url(browser.url(admin_url("compose_preview", campaign.pk)))
        expect(page.locator("#compose-preview")).to_contain_text("Nothing was saved.")
        expect(page.locator("#cs-preview-subject")).to_contain_text("Scripts off, ")
        frame_element = page.locator("#cs-preview-result iframe.cs-html")
        frame = sandboxed_html(frame_element)
        expect(frame.locator("body")).to_contain_text("what changed on the platform")
        browser.screenshot("preview-page")
        browser.element_screenshot(frame_element, "preview-page-html-part")
        assert Campaign.objects.get(pk=campaign.pk).subject_template == campaign.subject_template
    finally:
        context.close()


# --- The emergency stop -------------------------------------------------------------------------


def test_reviewer_halts_and_releases_all_sending_from_the_emergency_stop_page(
    browser_page: BrowserPage,
) -> None:
    campaign = seed_demo()
    campaign = services.submit_for_review(campaign, by=User.objects.get(username="olivia"))
    services.approve_campaign(
        campaign, by=User.objects.get(username="rita"), digest=campaign.frozen_digest
    )
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.SENDING

    page = browser_page.page
    browser_page.login("rita")
    browser_page.goto(reverse("campaigns_emergency_stop"))
    panel = page.locator("#emergency-stop")
    expect(panel).to_contain_text("1 campaign sending now")
    browser_page.screenshot("running")

    page.locator("#reason").fill("Provider reports a bounce storm")
    page.get_by_role("button", name="Halt all sending").click()
    assert "All sending is halted." in browser_page.success_message()
    assert SendingSwitch.is_halted()
    expect(panel).to_contain_text("Provider reports a bounce storm")
    browser_page.screenshot("halted")

    page.locator("#reason").fill("Bounces explained: one mistyped domain, now suppressed")
    page.get_by_role("button", name="Release sending").click()
    assert "Sending released" in browser_page.success_message()
    assert not SendingSwitch.is_halted()
    expect(panel).to_contain_text("Last released")
    expect(panel).to_contain_text("one mistyped domain")
    browser_page.screenshot("released")
    assert browser_page.errors == [], "\n".join(browser_page.errors)


# --- 4. The demo path, with a real worker --------------------------------------------------------

OUTBOX_DEADLINE_SECONDS = 60


@pytest.mark.worker
def test_approving_the_seeded_campaign_fills_the_outbox_with_one_eml_per_recipient(
    browser_page: BrowserPage,
    celery_workers: CeleryWorkers,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # A fresh outbox, shared with the worker through its environment: earlier runs and
    # other tests leave .eml files in the default one.
    settings.OUTBOX_DIR = tmp_path / "outbox"
    worker = celery_workers(
        name="browser-demo",
        concurrency=1,
        extra_env={
            "OUTBOX_DIR": str(settings.OUTBOX_DIR),
            "EMAIL_TRANSPORT": "campaigns.backends.OutboxBackend",
        },
    )
    campaign = seed_demo()

    submit_and_approve_in_browser(browser_page, campaign)
    approved_at = time.monotonic()
    expected = Counter(Delivery.objects.filter(campaign=campaign).values_list("address", flat=True))
    assert sum(expected.values()) == campaign.recipient_count == DEMO_USERS
    assert set(expected.values()) == {1}

    outbox = Path(settings.OUTBOX_DIR)
    files: list[Path] = []
    while time.monotonic() - approved_at < OUTBOX_DEADLINE_SECONDS:
        files = sorted(outbox.glob("*.eml"))
        if len(files) >= len(expected):
            break
        time.sleep(0.25)
    assert len(files) == len(expected), (
        f"{len(files)} of {len(expected)} messages after {OUTBOX_DEADLINE_SECONDS}s\n"
        + worker.log_tail()
    )

    seen: Counter[str] = Counter()
    for path in files:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        to = message["To"].addresses
        assert len(to) == 1, f"{path.name}: To: {message['To']}"
        for header in ("Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc"):
            assert message[header] is None, f"{path.name} has {header}"
        seen[to[0].addr_spec] += 1
    assert seen == expected

    # The ledger agrees with the outbox, and the campaign completes.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if campaign.status == Campaign.Status.SENT:
            break
        time.sleep(0.25)
    assert campaign.status == Campaign.Status.SENT
    assert set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        Delivery.Status.SENT
    }
    browser_page.goto(admin_url("change", campaign.pk))
    panel = browser_page.page.locator("#campaign-status")
    expect(panel.locator(".cs-badge").first).to_have_text("Sent")
    bar = panel.locator("progress#send-progress")
    expect(bar).to_have_attribute("value", str(DEMO_USERS))
    expect(bar).to_have_attribute("max", str(DEMO_USERS))
    browser_page.screenshot("rita-campaign-after-sending")


@pytest.mark.worker
def test_sending_panel_progress_advances_without_a_reload_to_its_maximum(
    browser_page: BrowserPage,
    celery_workers: CeleryWorkers,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Slow enough (3 messages a second) that the page sees the send in motion.
    settings.OUTBOX_DIR = tmp_path / "outbox"
    worker = celery_workers(
        name="browser-progress",
        concurrency=1,
        extra_env={
            "OUTBOX_DIR": str(settings.OUTBOX_DIR),
            "EMAIL_TRANSPORT": "campaigns.backends.OutboxBackend",
            "SEND_RATE_PER_SECOND": "3",
            "SEND_BURST": "1",
        },
    )
    campaign = seed_demo()
    olivia, rita = User.objects.get(username="olivia"), User.objects.get(username="rita")
    campaign = services.submit_for_review(campaign, by=olivia)

    page = browser_page.page
    browser_page.login("rita")
    browser_page.goto(admin_url("change", campaign.pk))
    bar = page.locator("progress#send-progress")
    expect(bar).to_have_attribute("max", str(DEMO_USERS))
    expect(bar).to_have_attribute("value", "0")
    # Marks this document: a reload or a navigation would lose it.
    page.evaluate("() => { window.__sameDocument = true; }")
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)

    # The poller picks up the start, the rising count and the end, all in this document.
    expect(page.locator('#sending-panel [data-field="status_label"]')).to_have_text(
        "Sending", timeout=30_000
    )
    # One condition, checked in the page every 100 ms: it notes a value between the ends
    # on the way, and holds when the bar is full.
    try:
        page.wait_for_function(
            """max => {
                const bar = document.getElementById("send-progress");
                if (bar.value > 0 && bar.value < max) window.__seenMidway = true;
                return bar.value >= max;
            }""",
            arg=DEMO_USERS,
            polling=100,
            timeout=90_000,
        )
    except PlaywrightTimeout:
        value = bar.evaluate("el => el.value")
        pytest.fail(f"progress stuck at {value}\n" + worker.log_tail())
    assert page.evaluate("() => window.__seenMidway") is True, (
        "the bar jumped from 0 to the end: it never showed a send in motion"
    )
    assert page.evaluate("() => window.__sameDocument") is True
    expect(page.locator('#sending-panel [data-stage="sent"] .cs-stage-count')).to_have_text(
        str(DEMO_USERS)
    )
    expect(page.locator('#sending-panel [data-field="status_label"]')).to_have_text(
        "Sent", timeout=60_000
    )
    expect(page.locator('#sending-panel [data-field="finished_at"]')).not_to_have_text("—")
    browser_page.screenshot("rita-campaign-sent-live")

    # The recipient table shows every delivery sent, and a message opens in the browser.
    browser_page.goto(reverse("admin:campaigns_campaign_deliveries", args=[campaign.pk]))
    rows = page.locator("#delivery-table tbody tr")
    expect(rows).to_have_count(DEMO_USERS)
    expect(page.locator('#delivery-table tbody tr[data-status="sent"]')).to_have_count(DEMO_USERS)
    browser_page.screenshot("recipient-table")
    rows.first.get_by_role("link", name="view").click()
    message = page.locator("#delivery-message")
    expect(message.locator(".cs-one-recipient")).to_have_text("1 recipient")
    expect(message.locator("pre.cs-text")).to_contain_text("what changed on the platform")
    browser_page.screenshot("delivery-message")

    # The list's progress column and the home page agree.
    browser_page.goto(reverse("admin:campaigns_campaign_changelist"))
    expect(page.locator("progress.cs-mini").first).to_have_attribute("value", str(DEMO_USERS))
    # The admin scrolls a wide result table inside its own box: no column may be clipped.
    clipped = page.evaluate(
        "() => { const r = document.querySelector('.results');"
        " return [r.scrollWidth, r.clientWidth]; }"
    )
    assert clipped[0] <= clipped[1], f"campaign list columns clipped: {clipped}"
    browser_page.screenshot("campaign-list")
    browser_page.goto(reverse("admin:index"))
    expect(page.locator("#finished")).to_contain_text(campaign.name)
    browser_page.screenshot("rita-home-finished")
    assert browser_page.errors == [], "\n".join(browser_page.errors)


# --- Rejection, and the pages that say no --------------------------------------------------------


def test_a_rejection_reaches_the_author_on_top_of_her_page(browser_page: BrowserPage) -> None:
    campaign = seed_demo()
    campaign = services.submit_for_review(campaign, by=User.objects.get(username="olivia"))
    page = browser_page.page
    browser_page.login("rita")
    browser_page.goto(admin_url("review", campaign.pk))
    page.locator("#reject-step > summary").click()
    page.locator("#reject-comment").fill("Name the maintenance date in the subject line.")
    browser_page.screenshot("rita-reject-step")
    page.get_by_role("button", name="Reject: back to draft").click()
    # One message, on the campaign page: not a second, contradicting one from the review.
    expect(page.locator("ul.messagelist li")).to_have_count(1)
    assert "Rejected" in browser_page.success_message()
    browser_page.logout()

    browser_page.login("olivia")
    browser_page.goto(admin_url("change", campaign.pk))
    banner = page.locator("#rejection-banner")
    expect(banner).to_contain_text("Sent back by rita")
    expect(banner).to_contain_text("Name the maintenance date in the subject line.")
    expect(page.get_by_role("button", name="Cancel campaign")).to_have_count(0)
    browser_page.screenshot("olivia-rejection-banner")

    # She fixes the subject and resubmits; rita sees what changed since her decision.
    subject = page.locator("#id_subject_template")
    subject.fill("Maintenance on Saturday: " + subject.input_value())
    page.get_by_role("button", name="Save and continue editing").click()
    page.get_by_role("button", name="Submit for review").click()
    assert "Submitted for review" in browser_page.success_message()
    browser_page.logout()
    browser_page.login("rita")
    browser_page.goto(admin_url("review", campaign.pk))
    since = page.locator("#since-last-review")
    expect(since).to_contain_text("Name the maintenance date in the subject line.")
    expect(since.locator(".cs-add").first).to_contain_text("Maintenance on Saturday")
    browser_page.screenshot("rita-review-since-last")

    # A GET on an action and a refused approval are pages that explain themselves.
    response = page.goto(browser_page.url(admin_url("approve", campaign.pk)))
    assert response is not None and response.status == 405
    expect(page.locator("#error-page")).to_contain_text("only takes a button press")
    browser_page.screenshot("405-page")
    response = page.goto(browser_page.url(admin_url("review", 999_999)))
    assert response is not None and response.status == 404
    expect(page.locator("#error-page")).to_contain_text("404")
    browser_page.screenshot("404-page")
    assert browser_page.errors == [] or all("404" in e or "405" in e for e in browser_page.errors)
