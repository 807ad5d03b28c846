"""Loading rules: every mistake is a Problem with file, line, column and a useful message."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from engine.locations import Problem
from engine.rules import RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ("a.email", "a.push", "b.email", "b.push", "discount.email")


def load(tmp_path: Path, files: dict[str, str], templates: tuple[str, ...] = TEMPLATES) -> RuleSet:
    """Write ``files`` into a rules folder and ``<name>.<channel>.j2`` templates; load them."""
    rules_dir = tmp_path / "rules"
    templates_dir = tmp_path / "templates"
    rules_dir.mkdir()
    templates_dir.mkdir()
    for name, text in files.items():
        (rules_dir / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    for template in templates:
        (templates_dir / f"{template}.j2").write_text("{% block subject %}hi{% endblock %}\n")
    return load_rules(rules_dir, templates_dir)


def only_error(ruleset: RuleSet) -> Problem:
    assert len(ruleset.errors) == 1, [str(p) for p in ruleset.problems]
    return ruleset.errors[0]


def where(problem: Problem) -> tuple[str, int, int]:
    return Path(problem.file).name, problem.line, problem.column


ONE_STEP = """
id: one
trigger: {event: X}
channel: email
template: a
"""


# -- what loads ----------------------------------------------------------------------------


def test_the_sample_rules_load_without_problems_against_the_sample_templates() -> None:
    ruleset = load_rules(ROOT / "rules", ROOT / "templates")

    assert ruleset.problems == ()
    assert {r.id for r in ruleset.rules} == {
        "abandoned-checkout",
        "browse-abandonment",
        "post-purchase",
        "welcome-series",
        "tuesday-family",
        "friday-friends",
    }


def test_the_one_step_shorthand_becomes_a_single_step(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: shorthand
                trigger: {event: Product Viewed}
                wait: 2h
                channel: push
                template: a
            """
        },
    )

    (rule,) = ruleset.rules
    (step,) = rule.steps
    assert (step.index, step.channel, step.template) == (0, "push", "a")
    assert step.wait == step.offset == timedelta(hours=2)
    assert step.condition is None


def test_durations_become_step_offsets_from_the_trigger(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: waits
                trigger: {event: X}
                steps:
                  - {wait: 30s, channel: email, template: a}
                  - {wait: 30m, channel: email, template: a}
                  - {wait: 1h, channel: push, template: a}
                  - {wait: 2d, channel: email, template: b}
                  - {wait: 1w, channel: email, template: b}
            """
        },
    )

    (rule,) = ruleset.rules
    assert [s.wait for s in rule.steps] == [
        timedelta(seconds=30),
        timedelta(minutes=30),
        timedelta(hours=1),
        timedelta(days=2),
        timedelta(weeks=1),
    ]
    assert [s.offset for s in rule.steps] == [
        timedelta(seconds=30),
        timedelta(minutes=30, seconds=30),
        timedelta(hours=1, minutes=30, seconds=30),
        timedelta(days=2, hours=1, minutes=30, seconds=30),
        timedelta(days=9, hours=1, minutes=30, seconds=30),
    ]


def test_a_step_without_a_wait_is_due_at_the_trigger(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": ONE_STEP})

    assert ruleset.rules[0].steps[0].offset == timedelta(0)


def test_a_list_of_rules_in_one_file_loads_each(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "many.yaml": """
                - id: first
                  trigger: {event: X}
                  channel: email
                  template: a
                - id: second
                  trigger: {event: Y}
                  channel: push
                  template: b
            """
        },
    )

    assert ruleset.problems == ()
    assert [r.id for r in ruleset.rules] == ["first", "second"]
    assert [r.line for r in ruleset.rules] == [1, 5]


def test_segments_yaml_is_not_loaded_as_rules(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {"one.yaml": ONE_STEP, "segments.yaml": "at_risk: customer.stats.orders > 3\n"},
    )

    assert ruleset.problems == ()
    assert [r.id for r in ruleset.rules] == ["one"]


def test_yml_files_load_too(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"one.yml": ONE_STEP})

    assert [r.id for r in ruleset.rules] == ["one"]


def test_holdout_as_a_percentage_is_a_share(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": ONE_STEP + "holdout: 10%\n"})

    assert ruleset.rules[0].holdout == 0.1


# -- every mistake has a place and a message ----------------------------------------------


def test_a_yaml_syntax_error_points_at_the_bad_line(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "broken.yaml": """
                id: broken
                trigger:
                  event: X
                   key: foo
                channel: email
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("broken.yaml", 4, 7)
    assert problem.message.startswith("YAML:")
    assert ruleset.rules == ()


def test_a_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": "id: a\nid: b\n" + ONE_STEP.replace("id: one\n", "")})

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 2, 1)
    assert "duplicate key 'id'" in problem.message


def test_a_wrong_type_names_the_key_and_points_at_the_value(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": ONE_STEP + "priority: high\n"})

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 5, 11)
    assert problem.message.startswith("priority:")
    assert "integer" in problem.message
    assert problem.rule == "one"


def test_an_unknown_trigger_key_suggests_the_right_one(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path, {"r.yaml": ONE_STEP.replace("trigger: {event: X}", "trigger: {evnt: X}")}
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 2, 11)  # the key itself
    assert "unknown key 'evnt'" in problem.message
    assert "did you mean 'event'" in problem.message


def test_an_unknown_rule_key_suggests_the_right_one(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: typo
                trigger:
                  event: X
                stpes:
                  - channel: email
                    template: a
            """
        },
    )

    problem = next(p for p in ruleset.errors if "stpes" in p.message)
    assert where(problem) == ("r.yaml", 4, 1)
    assert "did you mean 'steps'" in problem.message
    assert ruleset.rules == ()


def test_an_unknown_key_with_no_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": ONE_STEP + "frobnicate: 3\n"})

    problem = only_error(ruleset)
    assert "unknown key 'frobnicate'" in problem.message
    assert "allowed:" in problem.message
    assert "priority" in problem.message


def test_a_bad_duration_shows_the_accepted_forms(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: dur
                trigger: {event: X}
                steps:
                  - wait: 2 days
                    channel: email
                    template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 4, 11)
    assert "steps.0.wait" in problem.message
    assert "'2 days'" in problem.message
    assert "30s, 30m, 1h, 2d, 1w" in problem.message


def test_a_bad_cron_is_an_error_at_the_schedule(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: cron
                trigger:
                  schedule: "0 9 * * FUNDAY"
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 3, 13)
    assert "is not a cron expression" in problem.message
    assert "'0 9 * * TUE'" in problem.message  # an example of a good one


def test_a_cron_that_never_fires_is_an_error(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: february-30
                trigger:
                  schedule: "0 0 30 2 *"
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 3, 13)
    assert "never fires" in problem.message


def test_an_expression_syntax_error_points_at_the_column_inside_the_file(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: syntax
                trigger: {event: X}
                if: event.properties.value >= >= 20
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    # `if: ` puts the expression at column 5; the second `>=` is its 27th character.
    assert where(problem) == ("r.yaml", 3, 31)
    assert problem.message.startswith("if: syntax error")


def test_an_unknown_expression_name_points_at_its_path_with_a_suggestion(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: unknown
                trigger: {event: X}
                if: customer.stats.orders >= 1 and customer.stats.ordres > 2
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 3, 36)
    assert "did you mean 'orders'" in problem.message


def test_an_unknown_name_in_a_step_condition_names_the_step(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: stepif
                trigger: {event: X}
                steps:
                  - channel: email
                    template: a
                    if: event.properties.valeu > 1
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 6, 9)
    assert problem.message.startswith("steps.if:")
    assert "did you mean 'value'" in problem.message


def test_a_declared_custom_property_lets_the_rule_load(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: declared
                trigger: {event: X}
                declare: {event.properties: [valeu]}
                if: event.properties.valeu > 1
                channel: email
                template: a
            """
        },
    )

    assert ruleset.problems == ()
    assert ruleset.rules[0].condition is not None


def test_event_is_refused_in_the_audience_of_a_schedule_rule(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: tuesday
                trigger:
                  schedule: "0 9 * * TUE"
                  audience: event.properties.value > 2
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 4, 13)
    assert "event rules only" in problem.message


def test_a_missing_template_names_the_expected_path(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: tmpl
                trigger: {event: X}
                steps:
                  - channel: email
                    template: a
                  - wait: 1d
                    channel: push
                    template: nope
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 8, 15)
    assert str(tmp_path / "templates" / "nope.push.j2") in problem.message


def test_a_template_for_another_channel_does_not_count(tmp_path: Path) -> None:
    # discount.email.j2 exists, discount.push.j2 does not.
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: push-only
                trigger: {event: X}
                channel: push
                template: discount
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 4, 11)
    assert "discount.push.j2" in problem.message


def test_a_duplicate_rule_id_keeps_the_first_file_and_reports_the_second(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "a.yaml": ONE_STEP,
            "b.yaml": "# the same id again\n" + ONE_STEP.lstrip().replace("event: X", "event: Y"),
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("b.yaml", 2, 1)
    assert "duplicate rule id 'one'" in problem.message
    assert "a.yaml:1" in problem.message
    (rule,) = ruleset.rules
    assert rule.trigger.event == "X"
    assert Path(rule.file).name == "a.yaml"


def test_an_exit_on_the_trigger_event_with_the_same_key_is_an_error(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: self-exit
                trigger:
                  event: Checkout Started
                  key: event.properties.cart_id
                exit_on:
                  - event: Checkout Started
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 6, 3)
    assert "'Checkout Started' is also the trigger" in problem.message
    assert "no step could ever run" in problem.message


def test_an_exit_on_the_trigger_event_for_all_keys_is_allowed(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: latest-only
                trigger:
                  event: Checkout Started
                  key: event.properties.cart_id
                exit_on:
                  - event: Checkout Started
                    key: false
                channel: email
                template: a
            """
        },
    )

    assert ruleset.problems == ()


def test_a_step_whose_quoted_if_is_false_can_never_run(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: dead-step
                trigger: {event: X}
                steps:
                  - channel: email
                    template: a
                  - channel: email
                    template: b
                    if: "false"
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 8, 9)
    assert "step 2 can never run" in problem.message


def test_a_rule_whose_if_is_false_can_never_run(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": ONE_STEP + 'if: "false"\n'})

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 5, 5)
    assert "the rule can never run" in problem.message


def test_a_step_whose_plain_yaml_if_is_false_can_never_run(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: dead-step
                trigger: {event: X}
                steps:
                  - channel: email
                    template: a
                  - channel: email
                    template: b
                    if: false
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 8, 9)
    assert "can never run" in problem.message, problem.message


def test_a_holdout_of_100_percent_or_more_is_refused(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": ONE_STEP + "holdout: 150%\n"})

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 5, 10)
    assert "below 100%" in problem.message


def test_variants_with_duplicate_ids_are_refused(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": ONE_STEP
            + "variants:\n  - {id: plain}\n  - {id: plain, weight: 2, template: discount}\n"
        },
    )

    problem = only_error(ruleset)
    assert "duplicate variant id" in problem.message
    assert Path(problem.file).name == "r.yaml"
    assert ruleset.rules == ()


def test_a_rule_without_steps_or_a_channel_and_template_is_refused(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": "id: nothing\ntrigger: {event: X}\n"})

    assert "needs `steps`, or `channel` and `template`" in only_error(ruleset).message


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"r.yaml": "- just a string\n"})

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 1, 3)
    assert "must be a mapping" in problem.message


def test_an_empty_file_is_a_warning_not_an_error(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"empty.yaml": "", "one.yaml": ONE_STEP})

    assert ruleset.errors == ()
    (problem,) = ruleset.problems
    assert problem.severity == "warning"
    assert [r.id for r in ruleset.rules] == ["one"]


# -- a broken file disables itself, never the others -----------------------------------------


def test_a_broken_file_is_skipped_whole_while_the_other_files_load(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "a_good.yaml": ONE_STEP,
            "b_half_broken.yaml": """
                - id: fine-on-its-own
                  trigger: {event: X}
                  channel: email
                  template: a
                - id: broken
                  trigger: {event: X}
                  channel: email
                  template: a
                  priority: high
            """,
            "c_good.yaml": ONE_STEP.replace("id: one", "id: two"),
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("b_half_broken.yaml", 9, 13)
    assert problem.rule == "broken"
    assert [r.id for r in ruleset.rules] == ["one", "two"]


def test_problems_are_reported_for_every_broken_rule_in_a_file(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                - id: first
                  trigger: {evnt: X}
                  channel: email
                  template: a
                - id: second
                  trigger: {event: X}
                  channel: email
                  template: missing
            """
        },
    )

    assert sorted((p.rule, p.line) for p in ruleset.errors) == [("first", 2), ("second", 8)]
    assert ruleset.rules == ()


# -- where the locator falls short (bugs) ----------------------------------------------------


def test_a_quoted_expression_error_points_at_the_column_inside_the_quotes(tmp_path: Path) -> None:
    # `if: "` puts the expression's first character at column 6, not 5 (the quote).
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: quoted
                trigger: {event: X}
                if: "customer.stats.orders >= 1 and customer.stats.ordres > 2"
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 3, 37)


@pytest.mark.xfail(
    reason=(
        "Known limitation: an error inside a block scalar (>-, |) points at the "
        "expression's first line, column 1, with the character offset in the message; "
        "the folded text has lost the source layout (engine/rules.py _expr)"
    ),
    strict=True,
)
def test_a_multi_line_expression_error_points_at_its_own_line(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {
            "r.yaml": """
                id: folded
                trigger: {event: X}
                if: >-
                  customer.stats.orders > 1
                  and customer.stats.ordres > 2
                channel: email
                template: a
            """
        },
    )

    problem = only_error(ruleset)
    assert where(problem) == ("r.yaml", 5, 7)


def test_a_duplicate_variant_id_points_at_the_duplicate_and_names_it(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        {"r.yaml": ONE_STEP + "variants:\n  - {id: plain}\n  - {id: plain, weight: 2}\n"},
    )

    problem = only_error(ruleset)
    assert problem.line == 7
    assert "'plain'" in problem.message
