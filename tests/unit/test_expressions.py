"""Rule expressions: dotted paths checked against the schema, compiled once, never eval'd."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
import rule_engine

from engine.context import CustomerFacts, TriggerFacts, values_for
from engine.expressions import ExpressionError, Scope, compile_expression

NOW = datetime(2026, 5, 5, 12, 0, tzinfo=UTC)


def values(**by_path: Any) -> Any:
    """``values(path)`` from keyword arguments spelled with double underscores."""
    table = {tuple(name.split("__")): value for name, value in by_path.items()}
    return lambda path: table.get(path)


def compile_error(text: str, **kwargs: Any) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, **kwargs)
    return caught.value


# -- dotted paths --------------------------------------------------------------------------


def test_a_dotted_stats_path_compiles_and_compares() -> None:
    expr = compile_expression("customer.stats.orders >= 2")

    assert expr.paths == (("customer", "stats", "orders"),)
    assert expr.matches(values(customer__stats__orders=2)) is True
    assert expr.matches(values(customer__stats__orders=1)) is False


def test_a_dotted_event_property_compiles_and_compares() -> None:
    expr = compile_expression("event.properties.value > 20")

    assert expr.paths == (("event", "properties", "value"),)
    assert expr.matches(values(event__properties__value=20.5)) is True
    assert expr.matches(values(event__properties__value=20)) is False


def test_a_subscripted_property_with_a_dash_compiles_to_the_same_kind_of_path() -> None:
    expr = compile_expression("event.properties['my-flag'] == true")

    assert expr.paths == (("event", "properties", "my-flag"),)
    assert expr.matches(values(**{"event__properties__my-flag": True})) is True
    assert expr.matches(values(**{"event__properties__my-flag": False})) is False


def test_expressions_evaluate_against_the_values_of_a_real_customer_and_event() -> None:
    customer = CustomerFacts(
        id=7,
        user_id="u-7",
        anonymous_id=None,
        email="ada@example.com",
        timezone="Europe/Stockholm",
        traits={"tags": ["vip"]},
        stats={"orders": 3},
    )
    event = TriggerFacts(
        name="Checkout Started",
        type="track",
        timestamp=NOW,
        properties={"value": 25, "cart_id": "c-1", "my-flag": True},
    )
    source = values_for(customer, event, NOW)

    for text in (
        "customer.stats.orders >= 2",
        "event.properties.value > 20",
        "event.properties['my-flag']",
        "event.properties.cart_id == 'c-1'",
        "customer.id == 'u-7'",
        "local_now.hour == 14",  # 12:00 UTC is 14:00 in Stockholm in May
    ):
        assert compile_expression(text).matches(source), text


# -- unknown names -------------------------------------------------------------------------


def test_an_unknown_stats_name_is_refused_with_a_suggestion() -> None:
    error = compile_error("customer.stats.ordres >= 2")

    assert "customer.stats.ordres" in error.message
    assert "did you mean 'orders'" in error.message
    assert error.column == 1


def test_an_unknown_name_reports_the_1_based_column_where_its_path_starts() -> None:
    text = "customer.stats.orders >= 2 and customer.stats.ordres > 1"

    error = compile_error(text)

    assert error.column == text.index("customer.stats.ordres") + 1 == 32
    assert "did you mean 'orders'" in error.message


def test_a_typo_of_a_known_ecommerce_property_is_refused_with_a_suggestion() -> None:
    error = compile_error("event.properties.valeu > 20")

    assert "did you mean 'value'" in error.message
    assert "declare" in error.message  # and how to keep it if it is deliberate


def test_a_declared_custom_property_close_to_a_known_one_is_accepted() -> None:
    expr = compile_expression(
        "event.properties.valeu > 20", declared={"event.properties": frozenset({"valeu"})}
    )

    assert expr.matches(values(event__properties__valeu=21))


def test_a_declaration_for_one_owner_does_not_allow_the_typo_under_another() -> None:
    error = compile_error(
        "customer.traits.frist_name == 'Ada'", declared={"event.properties": frozenset({"valeu"})}
    )

    assert "did you mean 'first_name'" in error.message


def test_an_arbitrary_custom_property_is_accepted_and_is_null_when_absent() -> None:
    expr = compile_expression("event.properties.gift_wrap_colour == null")

    assert expr.paths == (("event", "properties", "gift_wrap_colour"),)
    assert expr.matches(values()) is True
    assert expr.matches(values(event__properties__gift_wrap_colour="red")) is False


def test_a_name_outside_the_schema_at_the_top_is_refused_with_the_available_names() -> None:
    error = compile_error("cusotmer.stats.orders > 1")

    assert "did you mean 'customer'" in error.message
    assert "available: customer, event, local_now, now" in error.message


def test_a_group_of_values_is_not_a_value() -> None:
    error = compile_error("customer.stats == null")

    assert "customer.stats is a group of values" in error.message
    assert "orders" in error.message


# -- types ---------------------------------------------------------------------------------


def test_a_nullable_stat_compared_without_a_default_is_refused_with_the_fix() -> None:
    error = compile_error("customer.stats.days_since_last_order > 30")

    assert "nullable" in error.message
    assert "??" in error.message
    assert "customer.stats.days_since_last_order" in error.message  # not an internal symbol
    assert "_v0" not in error.message


def test_a_nullable_stat_with_a_default_compiles_and_uses_the_default_for_null() -> None:
    expr = compile_expression("(customer.stats.days_since_last_order ?? 0) > 30")

    assert expr.matches(values()) is False
    assert expr.matches(values(customer__stats__days_since_last_order=45.5)) is True


def test_an_expression_that_is_not_true_or_false_is_refused() -> None:
    error = compile_error("customer.stats.orders + 1")

    assert "not true/false" in error.message
    assert "float" in error.message


def test_a_non_boolean_expression_is_allowed_where_any_result_is_asked_for() -> None:
    expr = compile_expression("customer.stats.orders + 1", result="any")

    assert expr.evaluate(values(customer__stats__orders=2)) == 3


def test_an_empty_expression_is_refused() -> None:
    assert "non-empty" in compile_error("   ").message


# -- syntax errors ------------------------------------------------------------------------


def test_a_syntax_error_reports_its_column_in_the_original_text_after_rewritten_paths() -> None:
    # Two paths before the error are replaced by short symbols before rule-engine parses it;
    # the column must still point into what the marketer wrote.
    text = "customer.stats.orders >= 2 and event.properties.value > > 3"

    error = compile_error(text)

    assert error.column == text.rindex(">") + 1 == 57
    assert "column 57" in error.message


def test_a_syntax_error_after_a_subscripted_path_reports_the_original_column() -> None:
    text = "event.properties['my-flag'] == true and )"

    error = compile_error(text)

    assert error.column == text.index(")") + 1


def test_an_unknown_character_reports_its_column() -> None:
    text = "event.properties.value > 20 $"

    error = compile_error(text)

    assert error.column == len(text)
    assert "'$'" in error.message


# -- scope and local names -----------------------------------------------------------------


def test_event_is_not_available_in_a_customer_scope() -> None:
    error = compile_error("event.name == 'Order Completed'", scope=Scope.CUSTOMER)

    assert "unknown name 'event'" in error.message
    assert "event rules only" in error.message


def test_customer_and_now_are_available_in_a_customer_scope() -> None:
    expr = compile_expression(
        "customer.stats.orders >= 1 and now > local_now", scope=Scope.CUSTOMER
    )

    assert ("customer", "stats", "orders") in expr.paths


def test_comprehension_variables_are_not_unknown_names() -> None:
    expr = compile_expression("[x for x in customer.traits.tags if x == 'vip'].length > 0")

    assert expr.paths == (("customer", "traits", "tags"),)
    assert expr.matches(values(customer__traits__tags=["new", "vip"])) is True
    assert expr.matches(values(customer__traits__tags=["new"])) is False


# -- no deprecated rule-engine features ----------------------------------------------------


def test_compiling_and_evaluating_paths_emits_no_deprecation_warning() -> None:
    source = values(
        customer__stats__orders=3,
        customer__traits__plan="gold",
        event__properties__value=25,
        event__properties__products=[{"price": 5}],
    )
    texts = (
        "customer.stats.orders >= 2",
        "customer.traits.plan == 'gold'",
        "event.properties.value > 20",
        "event.properties.products[0]['price'] > 1",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for text in texts:
            assert compile_expression(text).matches(source), text


def test_a_mapping_attribute_lookup_deprecation_would_have_failed_the_warning_check() -> None:
    # Guards the test above: the deprecation class exists and is a warning that the filter
    # turns into an error, so "no warning" is not vacuous.
    deprecation = rule_engine.errors.MappingAttributeLookupDeprecation
    with warnings.catch_warnings(), pytest.raises(deprecation):
        warnings.simplefilter("error")
        warnings.warn("probe", deprecation, stacklevel=1)


def test_a_dotted_path_into_a_nested_property_evaluates_or_is_refused_at_load() -> None:
    # e.g. `event.properties.products[0].price`: either it works, or it must not compile.
    try:
        expr = compile_expression("event.properties.products[0].price > 1")
    except ExpressionError:
        return
    assert expr.matches(values(event__properties__products=[{"price": 2}]))


# -- describe and safety -------------------------------------------------------------------


def test_describe_gives_the_value_of_each_sub_expression_by_its_original_text() -> None:
    expr = compile_expression("customer.stats.orders >= 2 and event.properties.value > 20")

    parts = dict(expr.describe(values(customer__stats__orders=3, event__properties__value=10)))

    assert parts["customer.stats.orders >= 2 and event.properties.value > 20"] is False
    assert parts["customer.stats.orders >= 2"] is True
    assert parts["event.properties.value > 20"] is False
    assert parts["customer.stats.orders"] == 3
    assert parts["event.properties.value"] == 10


def test_describe_reports_an_evaluation_error_as_a_value_instead_of_raising() -> None:
    expr = compile_expression("event.properties.value > 20")

    parts = dict(expr.describe(values()))

    assert str(parts["event.properties.value > 20"]).startswith("error:")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true') == 0",
        "open('/etc/passwd') != null",
        "customer.__class__ == null",
    ],
)
def test_python_code_is_refused_not_evaluated(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text)


def test_an_expression_is_evaluated_by_rule_engine_and_not_by_python_eval() -> None:
    def no_eval(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("eval was called")

    with mock.patch("builtins.eval", no_eval), mock.patch("builtins.exec", no_eval):
        expr = compile_expression("customer.stats.orders >= 2 and event.properties.value > 20")
        assert expr.matches(values(customer__stats__orders=2, event__properties__value=21))
