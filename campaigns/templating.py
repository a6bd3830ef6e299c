"""Staff templates: a fixed set of placeholders over one recipient's flat dict of strings.

Django's template engine is deliberately not used: it always brings its builtins
(`{% load %}`, `{% include %}`, `{% debug %}`) and resolves dotted names into objects, and
staff-authored templates must reach neither. The whole language here is

    {{ name }}                  the recipient's value; missing or empty fails that delivery
    {{ name|default:"text" }}   the value, or the literal text when it is missing or empty

Anything else that looks like template syntax is refused with its line and column, so
the campaign form can point at the problem when the campaign is saved.

The module also holds the HTML side of staff content: the sanitizer (one allowlist, used
by the builder on every rendered HTML body), a report of what the sanitizer would remove,
and the text part derived from HTML.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser

import nh3

from accounts.validators import (
    ACCOUNT_FIELDS,
    BUILDER_FIELDS,
    HEADER_CONTROL,
    body_text_error,
    describe_character,
    person_text_error,
)

# Every template may use these; imported audience attributes add to them.
FIXED_PLACEHOLDERS = (*ACCOUNT_FIELDS, *BUILDER_FIELDS)

# Placeholders whose value only exists for some categories: service notices carry no
# unsubscribe link (they are mandatory mail), so their templates may not ask for one.
ANNOUNCEMENT_ONLY_PLACEHOLDERS = frozenset({"unsubscribe_url"})

PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Sizes refused at save, with a clear error. Email clients clip messages past about
# 100 KB anyway; the limits also bound the work of every scan of staff-written content.
MAX_SUBJECT_LENGTH = 500
MAX_TEMPLATE_LENGTH = 100_000

# Everything that starts or ends a construct of Django/Jinja-like template syntax.
_MARKER = re.compile(r"\{\{|\{%|\{#|%\}|#\}|\}\}")
_INLINE_SPACE = " \t"


class TemplateSyntaxError(ValueError):
    """A template that is refused, with where: `.position` is the 0-based offset."""

    def __init__(self, message: str, *, source: str, position: int) -> None:
        self.message = message
        self.position = position
        self.line = source.count("\n", 0, position) + 1
        self.column = position - (source.rfind("\n", 0, position) + 1) + 1
        super().__init__(f"line {self.line}, column {self.column}: {message}")


class RenderError(ValueError):
    """A template could not be rendered for one recipient: that delivery fails."""


class MissingPlaceholder(RenderError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f'the recipient has no value for "{name}" and the template gives no default'
        )


class UnsafeHeaderValue(RenderError):
    def __init__(self, header: str, *, value: str, position: int) -> None:
        self.header = header
        self.position = position
        char = value[position]
        kind = "a control character" if HEADER_CONTROL.match(char) else "an invisible character"
        super().__init__(
            f"the rendered {header} contains {kind} {describe_character(char)} "
            f"at position {position}"
        )


def describe_control(char: str) -> str:
    return f"a control character {describe_character(char)}"


@dataclass(frozen=True)
class Placeholder:
    name: str
    default: str | None
    position: int


_Node = str | Placeholder


@dataclass(frozen=True)
class _Parsed:
    """The nodes before the first syntax error, and that error (message, position) if any."""

    nodes: tuple[_Node, ...]
    error: tuple[str, int] | None


class _Refused(Exception):
    def __init__(self, message: str, position: int) -> None:
        self.message = message
        self.position = position


@dataclass(frozen=True)
class CompiledTemplate:
    source: str
    nodes: tuple[_Node, ...]

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(node.name for node in self.nodes if isinstance(node, Placeholder))

    @property
    def required(self) -> frozenset[str]:
        """Names used at least once without a default: a recipient must have a value."""
        return frozenset(
            node.name
            for node in self.nodes
            if isinstance(node, Placeholder) and node.default is None
        )

    def missing(self, values: Mapping[str, str]) -> frozenset[str]:
        """The required names this recipient has no value for (the review page counts them)."""
        return frozenset(name for name in self.required if _value(values, name) is None)

    def render(self, values: Mapping[str, str], *, html: bool = False) -> str:
        """Substitute the values; in HTML mode every substituted text is escaped."""
        out: list[str] = []
        for node in self.nodes:
            if isinstance(node, str):
                out.append(node)
                continue
            value = _value(values, node.name)
            if value is None:
                if node.default is None:
                    raise MissingPlaceholder(node.name)
                value = node.default
            out.append(html_lib.escape(value, quote=True) if html else value)
        return "".join(out)


def _value(values: Mapping[str, str], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    # Whitespace only counts as missing: "Hi   ," is the silent fallback we refuse.
    return text if text.strip() else None


def allowed_placeholders(
    *, category: str | None = None, attributes: Iterable[str] = ()
) -> frozenset[str]:
    """The fixed placeholders plus the given audience attribute names.

    With `category="service_notice"` the announcement-only names are left out.
    """
    names = set(FIXED_PLACEHOLDERS)
    names.update(name for name in attributes if PLACEHOLDER_NAME.fullmatch(name))
    if category is not None and category != "announcement":
        names -= ANNOUNCEMENT_ONLY_PLACEHOLDERS
    return frozenset(names)


def compile_template(source: str, *, allowed: Collection[str]) -> CompiledTemplate:
    """Parse a staff template, refusing syntax errors and unknown placeholders in order."""
    parsed = _parse(source)
    for node in parsed.nodes:
        if isinstance(node, Placeholder) and node.name not in allowed:
            raise TemplateSyntaxError(
                f'unknown placeholder "{node.name}"', source=source, position=node.position
            )
    if parsed.error is not None:
        message, position = parsed.error
        raise TemplateSyntaxError(message, source=source, position=position)
    return CompiledTemplate(source=source, nodes=parsed.nodes)


def _require_length(source: str, *, what: str, limit: int) -> None:
    if len(source) > limit:
        raise TemplateSyntaxError(
            f"the {what} is {len(source):,} characters long; the limit is {limit:,}",
            source=source,
            position=limit,
        )


def validate_subject(source: str) -> None:
    """Refuse control characters (CR, LF, NUL, any C0/C1, U+2028/2029), bidi overrides and
    invisible format characters in a subject template: one line of visible text."""
    _require_length(source, what="subject", limit=MAX_SUBJECT_LENGTH)
    problem = person_text_error(source)
    if problem is not None:
        position, why = problem
        suffix = "; it must be one line" if HEADER_CONTROL.match(source, position) else ""
        raise TemplateSyntaxError(f"the subject {why}{suffix}", source=source, position=position)


def compile_subject(source: str, *, allowed: Collection[str]) -> CompiledTemplate:
    validate_subject(source)
    return compile_template(source, allowed=allowed)


def validate_body(source: str) -> None:
    """Refuse an over-long body template, and control (but line breaks and tabs), bidi
    override or invisible format characters in its text."""
    _require_length(source, what="template", limit=MAX_TEMPLATE_LENGTH)
    problem = body_text_error(source)
    if problem is not None:
        position, why = problem
        raise TemplateSyntaxError(f"the template {why}", source=source, position=position)


# Where markup starts, and the rest of a tag up to the next "<" or ">".
_MARKUP_START = re.compile(r"<[A-Za-z/!?]")
_TAG_REST = re.compile(r"[^<>]*+")


def unclosed_markup(html: str) -> int | None:
    """The position of the first tag or comment not closed before the next one starts.

    Python's HTMLParser takes time that grows with the square of the input on unclosed
    tags ("<a <a <a ...": minutes for 200 KB), so HTML from staff is refused with a
    position before anything parses it. One pass with `find` and possessive matches.
    """
    position = 0
    while (start := _MARKUP_START.search(html, position)) is not None:
        index = start.start()
        if html.startswith("<!--", index):
            end = html.find("-->", index + 4)
            if end == -1:
                return index
            position = end + 3
            continue
        rest = _TAG_REST.match(html, index + 1)
        end = rest.end() if rest is not None else index + 1
        if end >= len(html) or html[end] == "<":
            return index
        position = end + 1
    return None


def validate_html_body(source: str) -> None:
    """An HTML template: a body template whose tags and comments are all closed."""
    validate_body(source)
    index = unclosed_markup(source)
    if index is not None:
        raise TemplateSyntaxError(
            "this tag is not closed before the next one starts (write a literal < as &lt;)",
            source=source,
            position=index,
        )


def compile_body(source: str, *, allowed: Collection[str]) -> CompiledTemplate:
    validate_body(source)
    return compile_template(source, allowed=allowed)


def check_header_value(value: str, *, header: str) -> str:
    """Return a rendered header value unchanged, or refuse it if it holds a control,
    bidi override or invisible character.

    A recipient value such as "Bob\\r\\nBcc: eve@evil.example" must fail the delivery,
    never reach a header.
    """
    problem = person_text_error(value)
    if problem is not None:
        raise UnsafeHeaderValue(header, value=value, position=problem[0])
    return value


@functools.lru_cache(maxsize=128)
def _parse(source: str) -> _Parsed:
    # Cached: the worker builds thousands of messages from the same few templates.
    nodes: list[_Node] = []
    pos = 0
    try:
        while True:
            match = _MARKER.search(source, pos)
            if match is None:
                break
            marker = match.group()
            if marker == "{%":
                raise _Refused(
                    "template tags ({% ... %}) are not allowed; use {{ placeholder }} only",
                    match.start(),
                )
            if marker == "{#":
                raise _Refused("template comments ({# ... #}) are not allowed", match.start())
            if marker != "{{":
                raise _Refused(
                    f'unbalanced braces: "{marker}" without a matching opening', match.start()
                )
            if match.start() > pos:
                nodes.append(source[pos : match.start()])
            placeholder, pos = _parse_placeholder(source, match.start())
            nodes.append(placeholder)
    except _Refused as refused:
        return _Parsed(nodes=tuple(nodes), error=(refused.message, refused.position))
    if pos < len(source):
        nodes.append(source[pos:])
    return _Parsed(nodes=tuple(nodes), error=None)


def _skip_space(source: str, pos: int) -> int:
    while pos < len(source) and source[pos] in _INLINE_SPACE:
        pos += 1
    return pos


def _parse_placeholder(source: str, start: int) -> tuple[Placeholder, int]:
    """Parse `{{ name }}` or `{{ name|default:"text" }}` starting at `start` (the braces)."""
    end = len(source)
    pos = _skip_space(source, start + 2)
    name_match = PLACEHOLDER_NAME.match(source, pos)
    if name_match is None:
        if source.startswith("}}", pos):
            raise _Refused("empty placeholder", start)
        if pos >= end:
            raise _Refused('unclosed placeholder: missing "}}"', start)
        raise _Refused(
            f'unexpected "{source[pos]}": expected a placeholder name such as {{{{ first_name }}}}',
            pos,
        )
    name_position = pos
    name = name_match.group()
    pos = name_match.end()
    if pos < end and source[pos] in ".[":
        expression = re.match(r"[A-Za-z0-9_.\[\]'\"]*", source[name_position:])
        shown = expression.group() if expression else name
        raise _Refused(
            f'attribute or item access is not allowed ("{shown}"); placeholders are plain names',
            name_position,
        )
    pos = _skip_space(source, pos)
    default: str | None = None
    if source.startswith("|", pos):
        pos += 1
        filter_match = PLACEHOLDER_NAME.match(source, pos)
        if filter_match is None:
            raise _Refused('expected a filter name after "|"', pos)
        if filter_match.group() != "default":
            raise _Refused(
                f'unknown filter "{filter_match.group()}"; only default:"text" is allowed', pos
            )
        pos = filter_match.end()
        if not source.startswith(':"', pos):
            if source.startswith(":'", pos):
                raise _Refused("the default text must be in double quotes", pos + 1)
            raise _Refused('expected :"text" after default', pos)
        default, pos = _parse_quoted(source, pos + 1)
        pos = _skip_space(source, pos)
    if not source.startswith("}}", pos):
        if pos >= end:
            raise _Refused('unclosed placeholder: missing "}}"', start)
        if source[pos] == "|":
            raise _Refused("only one filter is allowed", pos)
        raise _Refused(f'unexpected "{source[pos]}": expected "}}}}"', pos)
    return Placeholder(name=name, default=default, position=name_position), pos + 2


def _parse_quoted(source: str, quote: int) -> tuple[str, int]:
    """Read a double-quoted string at `quote`; only \\" and \\\\ are escapes."""
    pos = quote + 1
    chars: list[str] = []
    while pos < len(source):
        char = source[pos]
        if char == "\\":
            following = source[pos + 1 : pos + 2]
            if following not in ('"', "\\"):
                raise _Refused('only \\" and \\\\ may follow a backslash in default text', pos)
            chars.append(following)
            pos += 2
            continue
        if char == '"':
            return "".join(chars), pos + 1
        chars.append(char)
        pos += 1
    raise _Refused("unterminated default text: missing closing quote", quote)


# --- HTML ------------------------------------------------------------------------------

# Formatting only: enough for a typical table-based announcement, nothing that runs,
# embeds another document or submits anything.
SAFE_TAGS = frozenset(
    {
        "a",
        "abbr",
        "b",
        "blockquote",
        "br",
        "caption",
        "center",
        "code",
        "col",
        "colgroup",
        "dd",
        "div",
        "dl",
        "dt",
        "em",
        "font",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "li",
        "ol",
        "p",
        "pre",
        "s",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "u",
        "ul",
    }
)
_CELL_ATTRIBUTES = {"align", "valign", "width", "height", "colspan", "rowspan", "bgcolor"}
SAFE_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "title", "dir", "lang", "align"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor"},
    "td": _CELL_ATTRIBUTES,
    "th": _CELL_ATTRIBUTES,
    "col": {"width", "span"},
    "colgroup": {"width", "span"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type"},
}
SAFE_URL_SCHEMES = frozenset({"http", "https", "mailto"})
# Inline CSS is how email is styled; layout-escaping properties (position, z-index) and
# anything that fetches (background-image, content, behavior) stay out.
SAFE_STYLE_PROPERTIES = frozenset(
    {
        "background-color",
        "border",
        "border-bottom",
        "border-collapse",
        "border-color",
        "border-left",
        "border-radius",
        "border-right",
        "border-spacing",
        "border-style",
        "border-top",
        "border-width",
        "color",
        "display",
        "font",
        "font-family",
        "font-size",
        "font-style",
        "font-weight",
        "height",
        "letter-spacing",
        "line-height",
        "margin",
        "margin-bottom",
        "margin-left",
        "margin-right",
        "margin-top",
        "max-width",
        "min-width",
        "padding",
        "padding-bottom",
        "padding-left",
        "padding-right",
        "padding-top",
        "text-align",
        "text-decoration",
        "text-transform",
        "vertical-align",
        "white-space",
        "width",
    }
)

# Inside a style value, only colour functions; never a CSS escape or comment (they can
# spell "expression" or "url" in pieces), nor anything that fetches or runs.
_STYLE_FUNCTION = re.compile(r"([a-z-]*)\s*\(")
_SAFE_STYLE_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla"})
_UNSAFE_STYLE_TEXT = (
    "\\",
    "/*",
    "expression",
    "url",
    "javascript",
    "vbscript",
    "behavior",
    "binding",
    "@",
    "<",
    ">",
    "&",
)


def _safe_style_value(value: str) -> bool:
    lowered = value.lower()
    if any(text in lowered for text in _UNSAFE_STYLE_TEXT):
        return False
    return all(m.group(1) in _SAFE_STYLE_FUNCTIONS for m in _STYLE_FUNCTION.finditer(lowered))


def _filter_style(element: str, attribute: str, value: str) -> str | None:
    """nh3 attribute filter: keep only the style declarations whose values are safe."""
    if attribute != "style":
        return value
    kept = [
        declaration.strip()
        for declaration in value.split(";")
        if declaration.strip() and _safe_style_value(declaration.partition(":")[2])
    ]
    return "; ".join(kept) or None


_cleaner = nh3.Cleaner(
    tags=set(SAFE_TAGS),
    # Removed together with their content, not unwrapped into visible text.
    clean_content_tags={"script", "style", "title", "textarea", "select", "noscript"},
    attributes=SAFE_ATTRIBUTES,
    url_schemes=set(SAFE_URL_SCHEMES),
    filter_style_properties=set(SAFE_STYLE_PROPERTIES),
    attribute_filter=_filter_style,
    strip_comments=True,
    link_rel="noopener noreferrer",
)


def sanitize_html(html: str) -> str:
    """The one HTML allowlist: what any staff-authored or rendered HTML becomes."""
    return _cleaner.clean(html)


class _HtmlInventory(HTMLParser):
    """Elements, attributes and inline-style properties of a document, as counts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: Counter[str] = Counter()
        self.attributes: Counter[tuple[str, str, str]] = Counter()
        self.styles: Counter[tuple[str, str]] = Counter()
        self.comments = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements[tag] += 1
        for name, value in attrs:
            if name == "rel" and tag == "a":
                continue  # added by the sanitizer itself
            if name == "style":
                for declaration in (value or "").split(";"):
                    prop = declaration.partition(":")[0].strip().lower()
                    if prop:
                        self.styles[(tag, prop)] += 1
                continue
            self.attributes[(tag, name, (value or "").strip())] += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_comment(self, data: str) -> None:
        self.comments += 1


def html_changes(html: str) -> list[str]:
    """What `sanitize_html` would remove from `html`, as sentences for the campaign form.

    Works on template sources too: placeholders are plain text to the sanitizer. The
    input must have passed `unclosed_markup` (HTMLParser is slow on unclosed tags).
    """
    before = _HtmlInventory()
    before.feed(html)
    before.close()
    after = _HtmlInventory()
    after.feed(sanitize_html(html))
    after.close()

    changes: list[str] = []
    ignored_wrappers = {"html", "head", "body", "meta"}
    for tag, count in sorted((before.elements - after.elements).items()):
        if tag in ignored_wrappers:
            continue
        plural = "s" if count > 1 else ""
        changes.append(f"<{tag}> element{plural} removed ({count})")
    for (tag, name, value), _count in sorted((before.attributes - after.attributes).items()):
        if tag in ignored_wrappers or after.elements[tag] == 0:
            continue  # the whole element is gone and already reported
        if name in {"href", "src"} and value:
            changes.append(f'{name}="{value}" removed from <{tag}> (only http, https, mailto)')
        else:
            changes.append(f'attribute "{name}" removed from <{tag}>')
    for (tag, prop), _count in sorted((before.styles - after.styles).items()):
        if after.elements[tag] == 0:
            continue
        changes.append(f'style property "{prop}" removed from <{tag}>')
    if before.comments:
        changes.append(f"HTML comments removed ({before.comments})")
    return changes


_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "blockquote",
        "center",
        "dd",
        "div",
        "dl",
        "dt",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tr",
        "ul",
    }
)
_HIDDEN_TAGS = frozenset({"head", "script", "style", "title", "template", "noscript"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[tuple[str, int]] = []
        self.hidden = 0

    def _break(self, blank_line: bool = False) -> None:
        self.parts.append("\n\n" if blank_line else "\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden += 1
            return
        attributes = dict(attrs)
        if tag == "br":
            self._break()
        elif tag == "hr":
            self._break(True)
            self.parts.append("----")
            self._break(True)
        elif tag == "li":
            self._break()
            self.parts.append("- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "img":
            self.parts.append(attributes.get("alt") or "")
        elif tag == "a":
            self.links.append(((attributes.get("href") or "").strip(), len(self.parts)))
        elif tag in _BLOCK_TAGS:
            self._break(tag not in ("tr", "dt", "dd", "div"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN_TAGS:
            self.hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            text = " ".join("".join(self.parts[start:]).split())
            shown = href.removeprefix("mailto:") if href.startswith("mailto:") else href
            if href and shown != text and href != text:
                self.parts.append(f" ({href})" if text else href)
        elif tag in _BLOCK_TAGS:
            self._break(tag not in ("tr", "dt", "dd", "div"))

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text part for an HTML body: blocks on lines, links as "text (url)"."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = [" ".join(line.split()) for line in "".join(extractor.parts).split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text else ""
