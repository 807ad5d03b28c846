"""The creepiness guard: sensitive attributes and categories need ``uses_sensitive``, and a
rule that messages soon after a mere view gets a warning (``nudge validate``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from engine.config import SensitiveSettings
from engine.rendering import Renderer
from engine.rules import RuleSet, load_rules

EMAIL = "{% block subject %}Hi{% endblock %}{% block text %}{{ body }}{% endblock %}"


def load(tmp_path: Path, rule: str, templates: dict[str, str] | None = None) -> RuleSet:
    rules_dir, templates_dir = tmp_path / "rules", tmp_path / "templates"
    rules_dir.mkdir(parents=True)
    templates_dir.mkdir(parents=True)
    (rules_dir / "r.yaml").write_text(textwrap.dedent(rule).lstrip("\n"))
    for name, text in (templates or {"plain.email": EMAIL.replace("{{ body }}", "hi")}).items():
        (templates_dir / f"{name}.j2").write_text(text)
    renderer = Renderer(templates_dir)
    assert renderer.load() == []
    return load_rules(rules_dir, templates_dir, renderer=renderer, sensitive=SensitiveSettings())


def messages(ruleset: RuleSet) -> list[tuple[str, int, str]]:
    return [(p.severity, p.line, p.message) for p in ruleset.problems]


BIRTHDAY_RULE = """
id: birthday
trigger: {event: identify}
if: customer.traits.birthday != null
channel: email
template: plain
"""


def test_an_expression_reading_a_sensitive_trait_is_an_error_naming_it(tmp_path: Path) -> None:
    ruleset = load(tmp_path, BIRTHDAY_RULE)
    [(severity, line, message)] = messages(ruleset)
    assert (severity, line) == ("error", 3)
    assert "customer.traits.birthday" in message and "uses_sensitive" in message
    assert ruleset.rules == ()


def test_declaring_the_attribute_in_uses_sensitive_allows_it(tmp_path: Path) -> None:
    ruleset = load(tmp_path, BIRTHDAY_RULE + "uses_sensitive: [customer.traits.birthday]\n")
    assert messages(ruleset) == []
    assert [r.id for r in ruleset.rules] == ["birthday"]


def test_a_template_reading_a_sensitive_trait_is_an_error_at_the_step(tmp_path: Path) -> None:
    rule = """
    id: hello
    trigger: {event: identify}
    channel: email
    template: greet
    """
    greet = EMAIL.replace("{{ body }}", "{{ customer.traits.birthday }}")
    ruleset = load(tmp_path, rule, {"greet.email": greet})
    [(severity, line, message)] = messages(ruleset)
    assert (severity, line) == ("error", 4)
    assert "greet.email.j2" in message and "customer.traits.birthday" in message


def test_singling_out_a_sensitive_category_needs_categories(tmp_path: Path) -> None:
    rule = """
    id: pharmacy
    trigger: {event: Product Added, where: "event.properties.category == 'Pharmacy'"}
    channel: email
    template: plain
    wait: 1h
    """
    [(severity, _, message)] = messages(load(tmp_path, rule))
    assert severity == "error" and "'pharmacy'" in message and "categories" in message
    allowed = load(tmp_path / "ok", rule + "uses_sensitive: [categories]\n")
    assert messages(allowed) == []


def test_an_unknown_uses_sensitive_entry_suggests_the_right_one(tmp_path: Path) -> None:
    ruleset = load(tmp_path, BIRTHDAY_RULE + "uses_sensitive: [customer.traits.birthdy]\n")
    assert any("did you mean 'customer.traits.birthday'" in m for _, _, m in messages(ruleset))


def test_a_message_soon_after_a_mere_view_is_a_warning_not_an_error(tmp_path: Path) -> None:
    rule = """
    id: stalker
    trigger: {event: Product Viewed}
    steps:
      - wait: 10m
        channel: email
        template: plain
    """
    ruleset = load(tmp_path, rule)
    [(severity, line, message)] = messages(ruleset)
    assert (severity, line) == ("warning", 4)
    assert "10m" in message and "Product Viewed" in message
    assert [r.id for r in ruleset.rules] == ["stalker"]
    patient = load(tmp_path / "ok", rule.replace("wait: 10m", "wait: 2h"))
    assert messages(patient) == []
