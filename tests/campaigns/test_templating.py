"""Staff templates: the placeholder language, its refusals, and the HTML allowlist."""

from __future__ import annotations

import pytest

from accounts.models import AudienceAttribute
from campaigns.rendering import campaign_placeholders
from campaigns.templating import (
    FIXED_PLACEHOLDERS,
    MissingPlaceholder,
    TemplateSyntaxError,
    UnsafeHeaderValue,
    allowed_placeholders,
    check_header_value,
    compile_subject,
    compile_template,
    html_changes,
    html_to_text,
    sanitize_html,
    validate_subject,
)

ALLOWED = frozenset(FIXED_PLACEHOLDERS) | {"plan"}


def refused(source: str, *, allowed: frozenset[str] = ALLOWED) -> TemplateSyntaxError:
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(source, allowed=allowed)
    return info.value


# --- The language -------------------------------------------------------------------------


def test_placeholder_is_replaced_by_the_recipients_value() -> None:
    template = compile_template("Hi {{ first_name }}, your plan: {{plan}}.", allowed=ALLOWED)
    assert template.render({"first_name": "Ada", "plan": "Pro"}) == "Hi Ada, your plan: Pro."
    assert template.placeholders == {"first_name", "plan"}
    assert template.required == {"first_name", "plan"}


def test_default_is_used_when_the_value_is_missing_or_blank() -> None:
    template = compile_template('Hi {{ first_name|default:"there" }}!', allowed=ALLOWED)
    assert template.render({}) == "Hi there!"
    assert template.render({"first_name": ""}) == "Hi there!"
    assert template.render({"first_name": "   "}) == "Hi there!"
    assert template.render({"first_name": "Ada"}) == "Hi Ada!"
    assert template.required == frozenset()
    assert template.placeholders == {"first_name"}


def test_default_text_may_contain_escaped_quotes_and_braces() -> None:
    template = compile_template(r'{{ plan|default:"the \"free\" plan }} \\ ok" }}', allowed=ALLOWED)
    assert template.render({}) == 'the "free" plan }} \\ ok'


def test_missing_value_without_default_fails_instead_of_falling_back() -> None:
    template = compile_template("Hi {{ first_name }}!", allowed=ALLOWED)
    for values in ({}, {"first_name": ""}, {"first_name": " \t "}):
        with pytest.raises(MissingPlaceholder) as info:
            template.render(values)
        assert info.value.name == "first_name"
    assert template.missing({"last_name": "Lovelace"}) == {"first_name"}
    assert template.missing({"first_name": "Ada"}) == frozenset()


def test_a_name_used_once_without_default_is_required() -> None:
    template = compile_template(
        '{{ first_name|default:"you" }} and {{ first_name }}', allowed=ALLOWED
    )
    assert template.required == {"first_name"}
    with pytest.raises(MissingPlaceholder):
        template.render({})


def test_html_mode_escapes_values_and_defaults_but_text_mode_does_not() -> None:
    template = compile_template(
        '<p>{{ first_name }} {{ plan|default:"<b>&" }}</p>', allowed=ALLOWED
    )
    values = {"first_name": '<script>alert("x")</script> & co'}
    assert template.render(values, html=True) == (
        "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co &lt;b&gt;&amp;</p>"
    )
    assert template.render(values) == '<p><script>alert("x")</script> & co <b>&</p>'


def test_rendered_values_are_not_template_syntax_again() -> None:
    template = compile_template("{{ first_name }}", allowed=ALLOWED)
    assert template.render({"first_name": "{{ email }} {% debug %}"}) == "{{ email }} {% debug %}"


def test_single_braces_are_plain_text() -> None:
    template = compile_template("a { b } c {x}", allowed=ALLOWED)
    assert template.render({}) == "a { b } c {x}"
    assert template.placeholders == frozenset()


# --- Refusals, with where --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "position", "words"),
    [
        ("{% load static %}", 0, "template tags"),
        ('Hello {% include "x" %}', 6, "template tags"),
        ("{% debug %}", 0, "template tags"),
        ("Hi {{ user.password }}", 6, 'attribute or item access is not allowed ("user.password")'),
        ("{{ settings.SECRET_KEY }}", 3, '("settings.SECRET_KEY")'),
        ("{{ plan[0] }}", 3, "attribute or item access"),
        ("Hi {{ nickname }}", 6, 'unknown placeholder "nickname"'),
        ("{# staff note #}", 0, "template comments"),
        ("{{ first_name|upper }}", 14, 'unknown filter "upper"'),
        ("{{ first_name|safe }}", 14, 'unknown filter "safe"'),
        ("{{ first_name|default:'x' }}", 22, "double quotes"),
        ('{{ first_name|default:"x"|lower }}', 25, "only one filter"),
        ('{{ first_name|default:"x }}', 22, "unterminated default text"),
        (r'{{ first_name|default:"a\n" }}', 24, "backslash"),
        ("Hi {{ first_name", 3, 'unclosed placeholder: missing "}}"'),
        ("Hi {{ first_name }", 17, 'expected "}}"'),
        ("Hi }} there", 3, 'unbalanced braces: "}}"'),
        ("Hi %} there", 3, 'unbalanced braces: "%}"'),
        ("{{ }}", 0, "empty placeholder"),
        ("{{ 1 }}", 3, "expected a placeholder name"),
        ("{{{ first_name }}}", 2, "expected a placeholder name"),
        ("{{ first_name() }}", 13, "unexpected"),
    ],
)
def test_template_syntax_outside_the_language_is_refused_with_its_position(
    source: str, position: int, words: str
) -> None:
    error = refused(source)
    assert words in error.message
    assert error.position == position
    assert error.line == 1
    assert error.column == position + 1
    assert str(error) == f"line 1, column {position + 1}: {error.message}"


def test_error_message_names_line_and_column_on_later_lines() -> None:
    error = refused("Hello,\n\n  see {{ foo }} soon")
    assert str(error) == 'line 3, column 10: unknown placeholder "foo"'
    assert (error.line, error.column, error.position) == (3, 10, 17)


def test_the_first_problem_in_the_source_is_the_one_reported() -> None:
    unknown_first = refused("{{ foo }} then {% load x %}")
    assert unknown_first.message == 'unknown placeholder "foo"'
    tag_first = refused("{% load x %} then {{ foo }}")
    assert "template tags" in tag_first.message


def test_unknown_placeholder_depends_on_the_allowed_names_not_on_a_cache() -> None:
    compile_template("{{ tier }}", allowed={"tier"})
    error = refused("{{ tier }}", allowed=frozenset({"plan"}))
    assert error.message == 'unknown placeholder "tier"'
    assert compile_template("{{ tier }}", allowed={"tier"}).render({"tier": "gold"}) == "gold"


@pytest.mark.parametrize(
    ("source", "position", "named"),
    [
        ("Hi\r\nBcc: x@evil.example", 2, "U+000D (carriage return)"),
        ("Hi\nBcc: x@evil.example", 2, "U+000A (line feed)"),
        ("Hi\x00there", 2, "U+0000 (NUL)"),
        ("Hi\tthere", 2, "U+0009 (tab)"),
        ("Hi \x1b[31m", 3, "U+001B"),
        ("Hi\x85there", 2, "U+0085 (next line)"),
        ("Hi\u2028there", 2, "U+2028 (line separator)"),
        ("Hi\u2029there", 2, "U+2029 (paragraph separator)"),
        ("Hi\x7f", 2, "U+007F"),
    ],
)
def test_subject_with_a_control_character_is_refused_with_its_position(
    source: str, position: int, named: str
) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        validate_subject(source)
    assert info.value.position == position
    assert named in info.value.message
    assert str(info.value).startswith(f"line 1, column {position + 1}: ")
    with pytest.raises(TemplateSyntaxError):
        compile_subject(source, allowed=ALLOWED)


def test_subject_control_character_inside_a_default_is_refused_too() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        compile_subject('Hi {{ first_name|default:"a\rb" }}', allowed=ALLOWED)
    assert info.value.position == 27


def test_plain_unicode_subject_is_accepted() -> None:
    template = compile_subject("Ünïcødé 🎉 news for {{ first_name }}", allowed=ALLOWED)
    assert template.render({"first_name": "Zoë"}) == "Ünïcødé 🎉 news for Zoë"


def test_rendered_header_value_with_a_control_character_is_refused() -> None:
    assert check_header_value("Hello Ada", header="Subject") == "Hello Ada"
    with pytest.raises(UnsafeHeaderValue) as info:
        check_header_value("Hello Bob\r\nBcc: eve@evil.example", header="Subject")
    assert info.value.position == 9
    assert "carriage return" in str(info.value)


def test_allowed_placeholders_are_the_fixed_names_plus_valid_attribute_names() -> None:
    names = allowed_placeholders(attributes=["plan", "not a name"])
    assert names == set(FIXED_PLACEHOLDERS) | {"plan"}
    notice_names = allowed_placeholders(category="service_notice", attributes=["plan"])
    assert "unsubscribe_url" not in notice_names
    assert "plan" in notice_names


def test_a_campaigns_placeholders_include_every_imported_attribute(db: None) -> None:
    AudienceAttribute.objects.create(name="plan")
    assert campaign_placeholders("announcement") == set(FIXED_PLACEHOLDERS) | {"plan"}
    assert "unsubscribe_url" not in campaign_placeholders("service_notice")


# --- HTML ------------------------------------------------------------------------------------


def test_sanitizer_removes_scripts_handlers_and_javascript_urls() -> None:
    dirty = (
        '<p onclick="steal()">Hello<script>alert(1)</script></p>'
        '<img src="https://img.example/logo.png" onerror="alert(2)" alt="Logo">'
        '<a href="javascript:alert(3)">click</a>'
        '<a href=" JaVaScRiPt:alert(4)">again</a>'
        '<a href="data:text/html;base64,PHNjcmlwdD4=">data</a>'
        '<iframe src="https://evil.example"></iframe>'
        "<style>p { color: red }</style>"
        '<form action="https://evil.example"><input name="pw"></form>'
        '<p style="color: red; position: fixed; background-image: url(https://t.example/x)">s</p>'
    )
    clean = sanitize_html(dirty)
    lowered = clean.lower()
    for gone in (
        "<script",
        "alert(",
        "onclick",
        "onerror",
        "javascript:",
        "data:",
        "<iframe",
        "<style",
        "<form",
        "<input",
        "position",
        "background-image",
    ):
        assert gone not in lowered, gone
    assert '<img src="https://img.example/logo.png" alt="Logo">' in clean
    assert 'style="color:red"' in clean.replace(" ", "")


def test_sanitizer_keeps_formatting_and_safe_links() -> None:
    html = (
        "<h1>Title</h1><p><strong>bold</strong> <em>it</em></p>"
        '<table width="100%"><tr><td align="center">cell</td></tr></table>'
        '<a href="https://example.com/a?b=1&amp;c=2">web</a> <a href="mailto:help@example.com">mail</a>'
    )
    clean = sanitize_html(html)
    for kept in (
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<em>it</em>",
        'width="100%"',
        'align="center"',
        'href="https://example.com/a?b=1&amp;c=2"',
        'href="mailto:help@example.com"',
    ):
        assert kept in clean, kept


def test_html_changes_tell_staff_what_the_sanitizer_removes() -> None:
    changes = html_changes(
        '<p onclick="x()">Hi</p><script>alert(1)</script>'
        '<a href="javascript:alert(1)">x</a><img src=x onerror=alert(1)><!-- note -->'
    )
    assert "<script> element removed (1)" in changes
    assert 'attribute "onclick" removed from <p>' in changes
    assert 'attribute "onerror" removed from <img>' in changes
    assert 'href="javascript:alert(1)" removed from <a> (only http, https, mailto)' in changes
    assert "HTML comments removed (1)" in changes


def test_html_changes_is_empty_for_clean_templates_with_placeholders() -> None:
    source = (
        '<p style="color: #333">Hi {{ first_name|default:"there" }}</p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    )
    assert html_changes(source) == []


def test_html_to_text_keeps_structure_and_shows_link_targets() -> None:
    html = (
        "<html><head><title>t</title><style>p{}</style></head><body>"
        "<h1>Spring&nbsp;update</h1><p>Hello   <b>Ada</b>,<br>welcome.</p>"
        "<ul><li>One</li><li>Two</li></ul>"
        '<p>Read <a href="https://example.com/news">the news</a> or '
        '<a href="mailto:help@example.com">help@example.com</a> or '
        '<a href="https://example.com/x">https://example.com/x</a>.</p>'
        "<script>var secret = 1;</script><p>&lt;tag&gt; &amp; more</p></body></html>"
    )
    assert html_to_text(html) == (
        "Spring update\n\nHello Ada,\nwelcome.\n\n- One\n- Two\n\n"
        "Read the news (https://example.com/news) or help@example.com or "
        "https://example.com/x.\n\n<tag> & more\n"
    )
