"""The sandboxed renderer: real template files in temporary folders, no mocks."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.context import CustomerFacts, TriggerFacts
from engine.errors import NudgeError, RenderError
from engine.rendering import CHANNEL_BLOCKS, Rendered, Renderer, template_context

NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
UNSUBSCRIBE = "https://shop.example.com/u/abc?c=email&m=1"
SAMPLES = Path(__file__).resolve().parents[2] / "templates"


def tracked(url: str) -> str:
    return f"https://t.example/c/1?to={url}"


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def loaded(tmp_path: Path, files: dict[str, str], **options: Any) -> Renderer:
    renderer = Renderer(folder(tmp_path, files), **options)
    assert renderer.load() == []
    return renderer


def render(renderer: Renderer, name: str, channel: str, context: dict[str, Any]) -> Rendered:
    return renderer.render(name, channel, context, link=tracked, unsubscribe_url=UNSUBSCRIBE)


def failure(renderer: Renderer, name: str, channel: str, context: dict[str, Any]) -> RenderError:
    with pytest.raises(RenderError) as caught:
        render(renderer, name, channel, context)
    return caught.value


def push(title: str, body: str = "b") -> str:
    return f"{{% block title %}}{title}{{% endblock %}}{{% block body %}}{body}{{% endblock %}}"


CTX: dict[str, Any] = {"customer": {"first_name": "Ann", "traits": {"plan": "gold"}}}


# --- blocks and channels ---------------------------------------------------------------


def test_email_renders_each_block_stripped_and_a_missing_optional_block_as_empty(
    tmp_path: Path,
) -> None:
    renderer = loaded(
        tmp_path,
        {
            "hi.email.j2": "{% block subject %}  Hi {{ customer.first_name }} \n{% endblock %}\n"
            "{% block html %}\n<p>Hello</p>\n{% endblock %}",
            "hi.push.j2": "{% block title %}T{% endblock %}{% block body %} B {% endblock %}"
            "{% block url %}https://x.example/{% endblock %}",
        },
    )
    email = render(renderer, "hi", "email", CTX)
    assert email == Rendered(
        template="hi.email.j2",
        channel="email",
        content={"subject": "Hi Ann", "html": "<p>Hello</p>", "text": ""},
        links=(),
    )
    assert render(renderer, "hi", "push", CTX).content == {
        "title": "T",
        "body": "B",
        "url": "https://x.example/",
    }
    assert renderer.has("hi", "email") and renderer.has("hi", "push")
    assert not renderer.has("hi", "sms") and not renderer.has("bye", "email")
    assert set(CHANNEL_BLOCKS) == {"email", "push", "sms"}


def test_top_level_macros_imports_sets_and_extends_are_visible_in_blocks(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "layout.j2": "{% block html %}<main>{% block content %}{% endblock %}</main>"
            "{% endblock %}{% block text %}{{ self.content() }}{% endblock %}",
            "macros.j2": "{% macro greet(name) %}Hello {{ name }}{% endmacro %}",
            "news.email.j2": '{% extends "layout.j2" %}{% import "macros.j2" as m %}'
            "{% macro shout(x) %}{{ x | upper }}{% endmacro %}{% set brand = 'Acme' %}"
            "{% block subject %}{{ shout(brand) }}{% endblock %}"
            "{% block content %}{{ m.greet(customer.first_name) }}{% endblock %}",
        },
    )
    assert render(renderer, "news", "email", CTX).content == {
        "subject": "ACME",
        "html": "<main>Hello Ann</main>",
        "text": "Hello Ann",
    }


def test_templates_are_compiled_once_and_render_never_rereads_the_files(tmp_path: Path) -> None:
    renderer = loaded(tmp_path, {"a.push.j2": push("one"), "part.j2": "P1"})
    (tmp_path / "a.push.j2").write_text(push("two"))
    (tmp_path / "part.j2").unlink()
    assert render(renderer, "a", "push", CTX).content["title"] == "one"


# --- escaping, links, unsubscribe ------------------------------------------------------


def test_html_block_is_escaped_and_plain_blocks_and_partials_are_not(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "name.j2": "{{ customer.first_name }}",
            "n.email.j2": "{% block subject %}Hi {{ customer.first_name }}{% endblock %}"
            '{% block html %}<b>{% include "name.j2" %}</b>{% endblock %}'
            '{% block text %}{% include "name.j2" %}{% endblock %}',
            "n.push.j2": push("{{ customer.first_name }}", "{{ customer.first_name }}!"),
        },
    )
    context = {"customer": {"first_name": "Tom & Jerry <3"}}
    email = render(renderer, "n", "email", context).content
    assert email["html"] == "<b>Tom &amp; Jerry &lt;3</b>"
    assert email["subject"] == "Hi Tom & Jerry <3"
    assert email["text"] == "Tom & Jerry <3"
    assert render(renderer, "n", "push", context).content["body"] == "Tom & Jerry <3!"


def test_link_records_each_original_url_once_in_first_use_order(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "l.email.j2": "{% block subject %}s{% endblock %}"
            "{% block html %}<a href=\"{{ link('https://a.example/?x=1&y=2') }}\">a</a>"
            "{% for u in ['https://b.example/', 'https://a.example/?x=1&y=2'] %}"
            '<a href="{{ link(u) }}">u</a>{% endfor %}{% endblock %}'
            "{% block text %}{{ link('https://c.example/') }} {{ link('https://b.example/') }}"
            "{% endblock %}"
        },
    )
    out = render(renderer, "l", "email", CTX)
    assert out.links == ("https://a.example/?x=1&y=2", "https://b.example/", "https://c.example/")
    # the tracked URL is escaped like any value inside the HTML attribute, raw in text
    assert 'href="https://t.example/c/1?to=https://a.example/?x=1&amp;y=2"' in out.content["html"]
    assert out.content["text"] == (
        "https://t.example/c/1?to=https://c.example/ https://t.example/c/1?to=https://b.example/"
    )


@pytest.mark.parametrize("argument", ["missing.url", "none", "42", "''"])
def test_link_without_a_url_is_a_render_error(tmp_path: Path, argument: str) -> None:
    renderer = loaded(tmp_path, {"l.push.j2": push(f"{{{{ link({argument}) }}}}")})
    assert failure(renderer, "l", "push", CTX).line == 1


def test_unsubscribe_url_is_available_to_every_block(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "u.email.j2": "{% block subject %}s{% endblock %}"
            '{% block html %}<a href="{{ unsubscribe_url }}">Unsubscribe</a>{% endblock %}'
            "{% block text %}Unsubscribe: {{ unsubscribe_url }}{% endblock %}"
        },
    )
    out = render(renderer, "u", "email", CTX)
    assert out.content["html"] == f'<a href="{UNSUBSCRIBE.replace("&", "&amp;")}">Unsubscribe</a>'
    assert out.content["text"] == f"Unsubscribe: {UNSUBSCRIBE}"
    assert out.links == ()  # the unsubscribe link is not a tracked link


# --- errors ------------------------------------------------------------------------------


def test_undefined_variable_is_a_render_error_at_its_line(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "u.email.j2": "{% block subject %}s{% endblock %}\n{% block text %}\nHi\n"
            "{{ customer.nickname }}\n{% endblock %}"
        },
    )
    err = failure(renderer, "u", "email", CTX)
    assert (err.template, err.line) == ("u.email.j2", 4)
    assert "nickname" in err.message
    assert str(err) == f"u.email.j2:4: {err.message}"
    assert isinstance(err, NudgeError)


def test_render_error_text_names_template_and_line() -> None:
    assert str(RenderError("a.email.j2", 3, "boom")) == "a.email.j2:3: boom"
    assert str(RenderError("a.email.j2", None, "boom")) == "a.email.j2: boom"
    assert RenderError("a.email.j2", 3, "boom").message == "boom"


def test_error_inside_a_partial_points_at_the_include_and_names_the_partial(
    tmp_path: Path,
) -> None:
    renderer = loaded(
        tmp_path,
        {
            "part.j2": "ok\n{{ customer.nickname }}",
            "p.push.j2": "{% block title %}t{% endblock %}\n{% block body %}\n"
            '{% include "part.j2" %}{% endblock %}',
        },
    )
    err = failure(renderer, "p", "push", CTX)
    assert err.line == 3
    assert "(in part.j2, line 2)" in err.message


def test_unknown_template_is_a_render_error_without_a_line(tmp_path: Path) -> None:
    renderer = loaded(tmp_path, {"cart.push.j2": push("t")})
    err = failure(renderer, "cart", "email", CTX)
    assert (err.template, err.line) == ("cart.email.j2", None)
    assert "cart.push.j2" in err.message  # did you mean


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "''.__class__",
        "customer.__class__",
        "customer.traits.__class__.__subclasses__()",
        "link.__globals__",
        "range.__self__",
        "cycler.__init__.__globals__",
        "'{0.__class__}'.format(customer)",
    ],
)
def test_sandbox_escapes_are_render_errors(tmp_path: Path, expression: str) -> None:
    renderer = loaded(tmp_path, {"x.push.j2": push(f"{{{{ {expression} }}}}")})
    err = failure(renderer, "x", "push", CTX)
    assert err.line == 1


def test_type_errors_and_runaway_recursion_are_render_errors(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "t.push.j2": push("{{ 1 + 'a' }}"),
            "r.push.j2": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}" + push("{{ f(0) }}"),
        },
    )
    assert "TypeError" in failure(renderer, "t", "push", CTX).message
    assert failure(renderer, "r", "push", CTX).template == "r.push.j2"


# --- limits --------------------------------------------------------------------------


def test_nested_range_loops_stop_at_the_time_limit(tmp_path: Path) -> None:
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    renderer = loaded(tmp_path, {"spin.push.j2": push(loop)}, max_render_seconds=0.2)
    err = failure(renderer, "spin", "push", CTX)
    assert "time limit" in err.message and err.line == 1


def test_loops_over_any_iterable_stop_at_the_time_limit(tmp_path: Path) -> None:
    loop = "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    renderer = loaded(
        tmp_path,
        {"spin.push.j2": "{% set s = 'x' * 100000 %}\n" + push(loop)},
        max_render_seconds=0.2,
    )
    assert "time limit" in failure(renderer, "spin", "push", CTX).message


def test_range_keeps_the_sandbox_bound(tmp_path: Path) -> None:
    renderer = loaded(tmp_path, {"r.push.j2": push("{{ range(10**7) | list | length }}")})
    assert "MAX_RANGE" in failure(renderer, "r", "push", CTX).message


def test_output_over_the_size_limit_is_a_render_error_counted_in_utf8_bytes(
    tmp_path: Path,
) -> None:
    renderer = loaded(
        tmp_path,
        {
            "fits.push.j2": push("éé", "ééé"),  # 4 + 6 bytes
            "big.push.j2": push("éé", "éééé"),  # 4 + 8 bytes
            "loop.push.j2": "{% block title %}t{% endblock %}{% block body %}\n"
            "{% for i in range(100000) %}x{% endfor %}{% endblock %}",
        },
        max_output_bytes=10,
    )
    assert render(renderer, "fits", "push", CTX).content["body"] == "ééé"
    err = failure(renderer, "big", "push", CTX)
    assert "larger than 10 bytes" in err.message
    assert failure(renderer, "loop", "push", CTX).line == 2


@pytest.mark.parametrize(
    "expression",
    ["'x' * 10**9", "10**9 * 'x'", "[0] * 10**8", "2 ** (10**9)", "10 ** (10**10)", "s + s + s"],
)
def test_operators_refuse_to_build_huge_values(tmp_path: Path, expression: str) -> None:
    body = f"{{% set s = 'x' * 100000 %}}{{{{ {expression} }}}}"
    renderer = loaded(tmp_path, {"bomb.push.j2": push(body)}, max_output_bytes=256 * 1024)
    assert "would build a value" in failure(renderer, "bomb", "push", CTX).message


def test_ordinary_arithmetic_still_works(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path, {"ok.push.j2": push("{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ 1.5 * 2 }} {{ [1] + [2] }}")}
    )
    assert render(renderer, "ok", "push", CTX).content["title"] == "ababab 1024 3.0 [1, 2]"


# --- load problems ---------------------------------------------------------------------


def test_a_broken_template_is_a_problem_with_its_line_and_the_others_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = folder(
        tmp_path / "templates",
        {
            "good.push.j2": push("ok"),
            "broken.email.j2": "{% block subject %}s{% endblock %}\n\n{% if %}{% endif %}",
            "notes.txt": "{% if %}",
        },
    )
    monkeypatch.chdir(tmp_path)
    renderer = Renderer(Path("templates"))
    [problem] = renderer.load()
    assert (problem.file, problem.line, problem.column) == ("templates/broken.email.j2", 3, 1)
    assert problem.severity == "error" and "syntax error" in problem.message
    assert renderer.has("good", "push") and not renderer.has("broken", "email")
    absolute = Renderer(templates)  # shown as given, like the rule files' problems
    assert [p.file for p in absolute.load()] == [str(templates / "broken.email.j2")]


def test_problem_file_outside_the_cwd_is_shown_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = folder(tmp_path / "t", {"b.push.j2": "{% block title %}"})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    [problem] = Renderer(templates).load()
    assert problem.file == str(templates / "b.push.j2")


@pytest.mark.parametrize(
    ("name", "text", "needs"),
    [
        ("a.email.j2", "{% block html %}x{% endblock %}", "{% block subject %}"),
        (
            "b.email.j2",
            "{% block subject %}x{% endblock %}",
            "{% block html %} or {% block text %}",
        ),
        ("c.push.j2", "{% block title %}x{% endblock %}", "{% block body %}"),
        ("d.push.j2", "{% block body %}x{% endblock %}", "{% block title %}"),
    ],
)
def test_a_message_missing_a_required_block_is_a_problem(
    tmp_path: Path, name: str, text: str, needs: str
) -> None:
    renderer = Renderer(folder(tmp_path, {name: text, "ok.push.j2": push("t")}))
    [problem] = renderer.load()
    assert problem.file.endswith(name) and needs in problem.message
    base, channel, _ = name.split(".")
    assert not renderer.has(base, channel) and renderer.has("ok", "push")


def test_required_blocks_may_come_from_the_extended_layout_and_partials_are_not_messages(
    tmp_path: Path,
) -> None:
    renderer = loaded(
        tmp_path,
        {
            "layout.j2": "{% block subject %}{% endblock %}{% block text %}{% endblock %}",
            "news.email.j2": '{% extends "layout.j2" %}{% block subject %}S{% endblock %}',
            "snippet.part.j2": "no blocks: not a channel we send, so a partial",
        },
    )
    assert render(renderer, "news", "email", CTX).content == {
        "subject": "S",
        "html": "",
        "text": "",
    }
    assert not renderer.has("snippet", "part")


def test_a_missing_or_broken_partial_disables_the_message_that_uses_it(tmp_path: Path) -> None:
    renderer = Renderer(
        folder(
            tmp_path,
            {
                "footer.j2": "f",
                "bad.j2": "{% if %}",
                "a.push.j2": push('{% include "foter.j2" %}'),
                "b.push.j2": push('{% include "bad.j2" %}'),
                "c.push.j2": push(
                    '{% include "gone.j2" ignore missing %}{% include "footer.j2" %}'
                ),
            },
        )
    )
    problems = {Path(p.file).name: p.message for p in renderer.load()}
    assert problems["a.push.j2"] == "'foter.j2' does not exist (did you mean 'footer.j2'?)"
    assert problems["b.push.j2"] == "'bad.j2' does not compile"
    assert "syntax error" in problems["bad.j2"]
    assert not renderer.has("a", "push") and not renderer.has("b", "push")
    assert render(renderer, "c", "push", CTX).content["title"] == "f"


def test_a_missing_templates_folder_is_a_problem(tmp_path: Path) -> None:
    [problem] = Renderer(tmp_path / "nope").load()
    assert "does not exist" in problem.message


# --- paths ---------------------------------------------------------------------------


def test_paths_follow_includes_extends_and_imports(tmp_path: Path) -> None:
    renderer = loaded(
        tmp_path,
        {
            "birthday.j2": "{% if customer.traits.birthday %}Happy birthday!{% endif %}",
            "layout.j2": "{% block html %}{{ customer.stats['orders'] }}{% endblock %}",
            "macros.j2": "{% macro vip() %}{{ customer.traits.get('vip') }}{% endmacro %}",
            "m.email.j2": '{% extends "layout.j2" %}{% import "macros.j2" as m with context %}'
            "{% set greeting = 'Hi' %}"
            "{% block subject %}{{ greeting }} {{ customer.first_name }}{% endblock %}"
            "{% block text %}{% include 'birthday.j2' %}{{ m.vip() }}"
            "{% for p in event.properties.products %}{{ p.name }}{{ loop.index }}{% endfor %}"
            "{{ cart.products | length }}{{ customer.traits[key] }}{{ link('https://x/') }}"
            "{{ range(3) | list }}{{ unsubscribe_url }}{{ now }}{% endblock %}",
        },
    )
    assert renderer.paths("m", "email") == {
        "customer.first_name",
        "customer.traits.birthday",
        "customer.stats.orders",
        "customer.traits.vip",
        "event.properties.products",
        "cart.products",
        "customer.traits",  # read through a dynamic key: anything under it
        "key",
        "now",
    }
    assert renderer.paths("nope", "email") == set()


# --- template_context ----------------------------------------------------------------


def customer(**traits: Any) -> CustomerFacts:
    return CustomerFacts(
        id=7,
        user_id=None,
        anonymous_id="anon-7",
        email="ann@example.com",
        timezone="Europe/Paris",
        traits=traits,
        consent={"email": True},
        stats={
            "orders": 2,
            "last_order_at": (NOW - timedelta(days=3)).isoformat(),
            "open_checkouts": [(NOW - timedelta(hours=2)).isoformat()],
            "carts_abandoned_closed": 1,
        },
        event_counts={"identify": 1},
    )


def event(name: str = "Checkout Started", **properties: Any) -> TriggerFacts:
    return TriggerFacts(name=name, type="track", timestamp=NOW, properties=properties)


def context(who: CustomerFacts, what: TriggerFacts | None, **options: Any) -> dict[str, Any]:
    return template_context(
        who, what, rule_id="r1", rule_description="Remind", variant="b", now=NOW, **options
    )


def test_template_context_customer_rule_and_times() -> None:
    ctx = context(
        customer(first_name="Ann", birthday="1990-01-01"),
        event(),
        abandoned_after=timedelta(hours=1),
    )
    who = ctx["customer"]
    assert who["id"] == "anon-7" and who["customer_id"] == 7
    assert who["email"] == "ann@example.com" and who["first_name"] == "Ann"
    assert who["traits"]["birthday"] == "1990-01-01" and who["consent"] == {"email": True}
    assert who["timezone"] == "Europe/Paris" and who["event_counts"] == {"identify": 1}
    assert who["stats"]["orders"] == 2 and who["stats"]["days_since_last_order"] == 3.0
    assert who["stats"]["last_order_at"] == NOW - timedelta(days=3)  # a datetime again
    assert who["stats"]["carts_abandoned"] == 2
    assert ctx["rule"] == {"id": "r1", "description": "Remind"} and ctx["variant"] == "b"
    assert ctx["now"] == NOW and ctx["now"].tzinfo is UTC
    assert ctx["local_now"] == NOW and ctx["local_now"].utcoffset() == timedelta(hours=1)
    assert ctx["event"] == {
        "name": "Checkout Started",
        "type": "track",
        "timestamp": NOW,
        "properties": {},
    }


def test_template_context_display_id_first_name_and_unknown_zone() -> None:
    who = CustomerFacts(id=9, user_id=None, anonymous_id=None, email=None, timezone="Mars/Base")
    ctx = context(who, None)
    assert ctx["customer"]["id"] == "9" and ctx["customer"]["first_name"] is None
    assert ctx["local_now"].utcoffset() == timedelta(0)
    named = CustomerFacts(
        id=9, user_id="u9", anonymous_id="a9", email=None, timezone="UTC", traits={"first_name": ""}
    )
    assert context(named, None)["customer"]["id"] == "u9"
    assert context(named, None)["customer"]["first_name"] is None


def test_schedule_triggers_have_no_event_products_or_cart() -> None:
    ctx = context(customer(), None)
    assert ctx["event"] is None and ctx["products"] == [] and ctx["cart"] is None


@pytest.mark.parametrize(
    ("properties", "cart"),
    [
        (
            {"cart_id": "c1", "value": 30, "currency": "EUR", "url": "https://s/c1"},
            {"id": "c1", "value": 30, "currency": "EUR", "url": "https://s/c1", "products": []},
        ),
        (
            {"checkout_id": "k1", "total": 12.5},
            {"id": "k1", "value": 12.5, "currency": None, "url": None, "products": []},
        ),
        (
            {"cart_id": "c2", "revenue": 9, "value": None},
            {"id": "c2", "value": 9, "currency": None, "url": None, "products": []},
        ),
        ({"order_id": "o1", "value": 5}, None),
    ],
)
def test_cart_is_detected_from_cart_or_checkout_id(
    properties: dict[str, Any], cart: dict[str, Any] | None
) -> None:
    assert context(customer(), event(**properties))["cart"] == cart


def test_hidden_categories_leave_products_out_case_insensitively() -> None:
    products = [
        {"name": "Pills", "category": "Pharmacy"},
        {"name": "Ball", "category": "toys"},
        "not a product",
        {"name": "Cream", "category": "HEALTH"},
        {"name": "Mug"},
    ]
    what = event(cart_id="c1", products=products)
    ctx = context(customer(), what, hidden_categories=["pharmacy", "Health"])
    kept = [{"name": "Ball", "category": "toys"}, {"name": "Mug"}]
    assert ctx["products"] == kept and ctx["cart"]["products"] == kept
    assert ctx["event"]["properties"]["products"] == [kept[0], "not a product", kept[1]]
    assert what.properties["products"] == products  # the event itself is untouched
    plain = context(customer(), what)
    assert plain["products"] == [p for p in products if isinstance(p, dict)]
    assert plain["event"]["properties"] is what.properties


def test_products_that_are_not_a_list_are_empty() -> None:
    assert context(customer(), event(products="oops"))["products"] == []


# --- the sample templates --------------------------------------------------------------


def minimal_contexts() -> list[dict[str, Any]]:
    """A customer with no traits, and the events the sample rules trigger on with no
    properties (plus no event, as a schedule rule would have)."""
    who = CustomerFacts(id=1, user_id=None, anonymous_id="a1", email=None, timezone="UTC")
    events: list[TriggerFacts | None] = [
        None,
        *(event(name) for name in ("Checkout Started", "Product Viewed", "Order Completed")),
        TriggerFacts(name="identify", type="identify", timestamp=NOW),
    ]
    return [context(who, what) for what in events]


def test_every_sample_template_loads_and_renders_for_a_minimal_context() -> None:
    renderer = Renderer(SAMPLES)
    assert renderer.load() == []
    messages = [p.name.split(".")[:2] for p in sorted(SAMPLES.glob("*.*.j2"))]
    assert messages
    for name, channel in messages:
        assert renderer.has(name, channel)
        for ctx in minimal_contexts():
            out = render(renderer, name, channel, ctx)
            for block in CHANNEL_BLOCKS[channel]:
                if block != "url":
                    assert out.content[block], (name, block)
            assert out.links, name  # every message links somewhere, through link()
            if channel == "email":
                escaped = UNSUBSCRIBE.replace("&", "&amp;")
                assert f'<a href="{escaped}">Unsubscribe</a>' in out.content["html"], name
                assert UNSUBSCRIBE in out.content["text"], name
                hrefs = re.findall(r'href="([^"]*)"', out.content["html"])
                assert all(h == escaped or h.startswith("https://t.example/") for h in hrefs)


def test_sample_cart_email_lists_the_cart_products_escaped_in_html_only() -> None:
    renderer = Renderer(SAMPLES)
    renderer.load()
    who = CustomerFacts(
        id=1,
        user_id="u1",
        anonymous_id=None,
        email="a@example.com",
        timezone="UTC",
        traits={"first_name": "Tom & Jerry"},
    )
    what = event(
        cart_id="c1",
        url="https://shop.example.com/cart/c1",
        currency="EUR",
        products=[{"name": "Mug <XL>", "price": 12}, {"name": "Pills", "category": "pharmacy"}],
    )
    ctx = context(who, what, hidden_categories=["pharmacy"])
    out = render(renderer, "cart_email", "email", ctx)
    assert out.content["subject"] == "Tom & Jerry, your cart is waiting"
    assert "<li>Mug &lt;XL&gt; (12 EUR)</li>" in out.content["html"]
    assert "- Mug <XL>" in out.content["text"] and "Pills" not in str(out.content)
    assert out.links == ("https://shop.example.com/cart/c1",)
    assert render(renderer, "cart_push", "push", ctx).content["url"] == tracked(
        "https://shop.example.com/cart/c1"
    )
