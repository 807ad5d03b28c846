"""Rule expressions: rule-engine, compiled once against a typed schema of Nudge's context.

Marketers write dotted paths — ``customer.stats.orders >= 2``,
``event.properties.value > 20``, ``event.properties['cart-id']`` — over the context Nudge
provides. Before rule-engine sees an expression, every path is checked against
:data:`SCHEMA` (an unknown name is a load error with a "did you mean") and replaced by one
flat, typed symbol. Evaluation then hands rule-engine a flat ``{symbol: value}`` mapping, the
fastest form it evaluates, and never touches rule-engine's deprecated dot access on plain
dicts. Expressions are never ``eval``'d.

``event.properties`` and ``customer.traits`` are open: any name is allowed (a missing one is
null), but a name that is not a known property and is one typo away from one is refused
unless the rule declares it.
"""

from __future__ import annotations

import difflib
import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import rule_engine
from rule_engine import DataType
from rule_engine.parser import Parser

__all__ = [
    "ECOMMERCE_PROPERTIES",
    "KNOWN_TRAITS",
    "SCHEMA",
    "Expression",
    "ExpressionError",
    "Scope",
    "compile_expression",
]


class ExpressionError(ValueError):
    """An expression that does not compile; ``column`` is 1-based within the expression."""

    def __init__(self, message: str, *, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


# -- the schema ----------------------------------------------------------------------------

_F = DataType.FLOAT
_S = DataType.STRING
_B = DataType.BOOLEAN
_D = DataType.DATETIME
_NF = DataType.NULLABLE(DataType.FLOAT)
_NS = DataType.NULLABLE(DataType.STRING)
_NB = DataType.NULLABLE(DataType.BOOLEAN)
_ND = DataType.NULLABLE(DataType.DATETIME)
_ANY = DataType.UNDEFINED


@dataclass(frozen=True)
class _Open:
    """A mapping with names not fixed in advance (properties, traits, counters)."""

    value: Any = _ANY
    known: frozenset[str] = frozenset()


KNOWN_TRAITS = frozenset(
    {
        "email",
        "phone",
        "first_name",
        "last_name",
        "name",
        "username",
        "title",
        "timezone",
        "accepts_marketing",
        "push_tokens",
        "birthday",
        "age",
        "gender",
        "city",
        "country",
        "address",
        "company",
        "created_at",
        "website",
        "avatar",
        "description",
        "id",
        "plan",
    }
)

#: Segment e-commerce spec v2 properties, for typo detection on those events.
ECOMMERCE_PROPERTIES = frozenset(
    {
        "query",
        "product_id",
        "sku",
        "category",
        "name",
        "brand",
        "variant",
        "price",
        "quantity",
        "coupon",
        "position",
        "url",
        "image_url",
        "cart_id",
        "checkout_id",
        "order_id",
        "affiliation",
        "value",
        "revenue",
        "total",
        "subtotal",
        "shipping",
        "tax",
        "discount",
        "currency",
        "products",
        "list_id",
        "step",
        "shipping_method",
        "payment_method",
        "promotion_id",
        "creative",
    }
)

_STATS: dict[str, Any] = {
    "has_account": _B,
    "events": _F,
    "first_seen_at": _ND,
    "last_seen_at": _ND,
    "orders": _F,
    "revenue": _F,
    "aov": _F,
    "refunded": _F,
    "cancelled_orders": _F,
    "first_order_at": _ND,
    "last_order_at": _ND,
    "days_since_last_order": _NF,
    "median_days_between_orders": _NF,
    "lapse_ratio": _NF,
    "checkouts_started": _F,
    "checkouts_completed": _F,
    "carts_abandoned": _F,
    "order_weekdays": DataType.ARRAY(_F),
    "order_hours": DataType.ARRAY(_F),
    "event_counts": _Open(_F),
}

SCHEMA: dict[str, Any] = {
    "event": {
        "name": _S,
        "type": _S,
        "timestamp": _D,
        "properties": _Open(_ANY, ECOMMERCE_PROPERTIES),
    },
    "customer": {
        "id": _S,
        "user_id": _NS,
        "anonymous_id": _NS,
        "email": _NS,
        "timezone": _S,
        "traits": _Open(_ANY, KNOWN_TRAITS),
        "consent": {"email": _NB, "push": _NB, "sms": _NB},
        "stats": _STATS,
        "segments": DataType.ARRAY(_S),
        "rfm": {"r": _NF, "f": _NF, "m": _NF, "score": _NS, "segment": _NS},
        "habits": {"top_weekday": _NS, "top_weekday_share": _NF},
        "preferences": {
            "top_category": _NS,
            "top_categories": DataType.ARRAY(_S),
            "top_brand": _NS,
            "top_brands": DataType.ARRAY(_S),
            "price_band": _NS,
            "buys_on_discount": _NB,
        },
        "predicted": {
            "p_alive": _NF,
            "expected_orders_30d": _NF,
            "expected_orders_90d": _NF,
            "expected_orders_365d": _NF,
            "expected_order_value": _NF,
            "clv_365d": _NF,
        },
    },
    "now": _D,
    "local_now": _D,
}


class Scope:
    """Which top-level names an expression may use (``event`` only in event rules)."""

    EVENT = frozenset({"event", "customer", "now", "local_now"})
    CUSTOMER = frozenset({"customer", "now", "local_now"})


# -- compiling -------------------------------------------------------------------------------

_PARSER = Parser()
#: rule-engine's own attributes (``name.length``, ``when.weekday`` …), allowed after a value.
_BUILTIN_ATTRIBUTES = frozenset(
    {
        "as_lower",
        "as_upper",
        "ceiling",
        "date",
        "day",
        "days",
        "decode",
        "encode",
        "ends_with",
        "floor",
        "hour",
        "is_empty",
        "is_nan",
        "keys",
        "length",
        "microsecond",
        "microseconds",
        "millisecond",
        "minute",
        "month",
        "second",
        "seconds",
        "starts_with",
        "to_ary",
        "to_epoch",
        "to_flt",
        "to_int",
        "to_set",
        "to_str",
        "total_seconds",
        "values",
        "weekday",
        "year",
        "zone_name",
    }
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class _Path:
    parts: tuple[str, ...]
    start: int
    ends: tuple[int, ...]  # where each part ends in the text

    @property
    def end(self) -> int:
        return self.ends[-1]

    @property
    def text(self) -> str:
        out = self.parts[0]
        for part in self.parts[1:]:
            out += f".{part}" if _IDENT.match(part) else f"[{part!r}]"
        return out


def _tokens(text: str) -> list[Any]:
    lexer = _PARSER._lexer.clone()  # rule-engine's own lexer, so paths are found exactly
    lexer.input(text)
    try:
        return list(iter(lexer.token, None))
    except Exception as exc:  # a character rule-engine's grammar does not know
        bad = exc.args[1] if len(exc.args) > 1 else None
        column = getattr(bad, "lexpos", 0) + 1
        raise ExpressionError(
            f"unexpected character {text[column - 1 : column]!r} at column {column}",
            column=column,
        ) from exc


def _paths(text: str) -> list[_Path]:
    tokens = _tokens(text)
    # Comprehension variables ([x for x in ...]) are the expression's own names.
    local = {
        tokens[k + 1].value
        for k, tok in enumerate(tokens[:-1])
        if tok.type == "FOR" and tokens[k + 1].type == "SYMBOL"
    }
    paths: list[_Path] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        previous = tokens[i - 1].type if i else None
        if tok.type != "SYMBOL" or previous in ("ATTR", "ATTR_SAFE") or tok.value in local:
            i += 1
            continue
        parts = [tok.value]
        ends = [tok.lexpos + len(tok.value)]
        j = i + 1
        while j < len(tokens):
            if tokens[j].type in ("ATTR", "ATTR_SAFE") and j + 1 < len(tokens):
                if tokens[j + 1].type != "SYMBOL":
                    break
                parts.append(tokens[j + 1].value)
                ends.append(tokens[j + 1].lexpos + len(tokens[j + 1].value))
                j += 2
            elif (
                tokens[j].type in ("LBRACKET", "LBRACKET_SAFE")
                and j + 2 < len(tokens)
                and tokens[j + 1].type == "STRING"
                and tokens[j + 2].type == "RBRACKET"
            ):
                parts.append(_string_value(tokens[j + 1].value))
                ends.append(tokens[j + 2].lexpos + 1)
                j += 3
            else:
                break
        paths.append(_Path(tuple(parts), tok.lexpos, tuple(ends)))
        i = j
    return paths


def _string_value(literal: str) -> str:
    from rule_engine.parser import literal_eval

    return str(literal_eval(literal))


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class _Binding:
    symbol: str
    parts: tuple[str, ...]
    datatype: Any


def _bind(
    path: _Path, scope: frozenset[str], declared: Mapping[str, frozenset[str]]
) -> tuple[tuple[str, ...], Any]:
    """The part of ``path`` the schema knows (longest typed prefix) and its type."""
    head = path.parts[0]
    if head not in scope:
        where = "" if head not in SCHEMA else " here (event rules only)"
        raise ExpressionError(
            f"unknown name {head!r}{where}{_suggest(head, scope)}; "
            f"available: {', '.join(sorted(scope))}",
            column=path.start + 1,
        )
    node: Any = SCHEMA[head]
    used = [head]
    for part in path.parts[1:]:
        if isinstance(node, dict):
            if part not in node:
                raise ExpressionError(
                    f"unknown name {'.'.join([*used, part])!r}{_suggest(part, node)}",
                    column=path.start + 1,
                )
            node = node[part]
            used.append(part)
        elif isinstance(node, _Open):
            owner = ".".join(used)
            allowed = node.known | declared.get(owner, frozenset())
            if node.known and part not in allowed:
                hint = _suggest(part, node.known)
                if hint:
                    raise ExpressionError(
                        f"{owner}.{part} is not a known name{hint}; if it is a custom one, "
                        f"declare it in the rule's `declare: {{{owner}: [{part}]}}`",
                        column=path.start + 1,
                    )
            used.append(part)
            node = node.value
        else:
            break  # further parts are rule-engine's own (e.g. a method on a string)
    if isinstance(node, dict):
        raise ExpressionError(
            f"{'.'.join(used)} is a group of values, not a value: use one of "
            f"{', '.join(sorted(node))}",
            column=path.start + 1,
        )
    if isinstance(node, _Open):
        node = DataType.MAPPING(DataType.STRING, node.value)
    return tuple(used), node


# -- fast path -----------------------------------------------------------------------------
#
# Most marketer expressions are comparisons of paths with literals joined by and/or/not.
# For those, the AST rule-engine parsed and type-checked is turned into plain Python
# closures with rule-engine's semantics (a property test holds the two to the same
# results); anything else is evaluated by rule-engine itself. Measured here: a 3-clause
# expression costs ~25 µs through rule-engine (value coercion and type checks on every
# call) and ~2 µs as closures; rules run for every matching event and due step.

_Fast = Callable[[Mapping[str, Any]], Any]


class _Unsupported(Exception):
    """A value the fast path does not model (arrays, mappings): use rule-engine."""


def _kind(value: Any) -> type | str:
    """The type rule-engine compares by (after it turns every number into a Decimal)."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int | float):
        return "number"
    if value is None or isinstance(value, str | datetime):
        return type(value)
    raise _Unsupported


def _equal(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and bool(a == b)


def _ordered(op: str, compare: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    if a is None and b is None:
        return op in ("ge", "le")
    if _kind(a) != _kind(b):
        raise rule_engine.EvaluationError("data type mismatch")
    return compare(a, b)


def _fast(node: Any) -> _Fast | None:
    kind = type(node).__name__
    if kind == "SymbolExpression":
        name = node.name
        return lambda t: t[name]
    if kind == "FloatExpression":
        number = float(node.value)
        return lambda _t: number
    if kind in ("StringExpression", "BooleanExpression"):
        constant = node.value
        return lambda _t: constant
    if kind == "NullExpression":
        return lambda _t: None
    if kind == "UnaryExpression" and node.type == "not":
        inner = _fast(node.right)
        return None if inner is None else (lambda t: not inner(t))
    if kind not in (
        "LogicExpression",
        "ComparisonExpression",
        "ArithmeticComparisonExpression",
    ):
        return None
    left, right = _fast(node.left), _fast(node.right)
    if left is None or right is None:
        return None
    op = node.type
    if op == "and":
        return lambda t: bool(left(t)) and bool(right(t))
    if op == "or":
        return lambda t: bool(left(t)) or bool(right(t))
    if op == "eq":
        return lambda t: _equal(left(t), right(t))
    if op == "ne":
        return lambda t: not _equal(left(t), right(t))
    compare: Callable[[Any, Any], bool] | None = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }.get(op)
    if compare is None:
        return None

    return lambda t: _ordered(op, compare, left(t), right(t))


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled expression; :meth:`evaluate` takes a :class:`Values` source."""

    text: str
    rule: rule_engine.Rule = field(repr=False)
    bindings: tuple[_Binding, ...] = field(repr=False)
    fast: _Fast | None = field(default=None, repr=False)

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        return tuple(b.parts for b in self.bindings)

    def evaluate(self, values: Callable[[tuple[str, ...]], Any]) -> Any:
        """Evaluate with ``values(path)`` giving each referenced path's value (None if absent).

        Raises ``rule_engine.EngineError`` subclasses when the data does not fit (e.g. a null
        compared with ``>``); callers record that as a failed condition.
        """
        thing = {b.symbol: values(b.parts) for b in self.bindings}
        if self.fast is not None:
            try:
                return self.fast(thing)
            except _Unsupported:
                pass
        return self.rule.evaluate(thing)

    def slow_evaluate(self, values: Callable[[tuple[str, ...]], Any]) -> Any:
        """Evaluate through rule-engine only (what :meth:`evaluate` must agree with)."""
        return self.rule.evaluate({b.symbol: values(b.parts) for b in self.bindings})

    def matches(self, values: Callable[[tuple[str, ...]], Any]) -> bool:
        return bool(self.evaluate(values))

    def describe(self, values: Callable[[tuple[str, ...]], Any]) -> list[tuple[str, Any]]:
        """(sub-expression text, value) for the expression and each of its parts (preview)."""
        thing = {b.symbol: values(b.parts) for b in self.bindings}
        names = {b.symbol: ".".join(b.parts) for b in self.bindings}
        out: list[tuple[str, Any]] = []
        _walk(self.rule.statement.expression, thing, names, out)
        return out


def compile_expression(
    text: str,
    *,
    scope: frozenset[str] = Scope.EVENT,
    declared: Mapping[str, frozenset[str]] | None = None,
    result: str = "boolean",
) -> Expression:
    """Check ``text`` against the schema and compile it; raises :class:`ExpressionError`."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression must be non-empty text")
    declared = declared or {}
    bindings: dict[tuple[str, ...], _Binding] = {}
    pieces: list[str] = []
    spans: list[tuple[int, int, int, int]] = []  # rewritten start/len, original start/len
    cursor = 0
    written = 0
    for path in _paths(text):
        used, datatype = _bind(path, scope, declared)
        binding = bindings.get(used)
        if binding is None:
            binding = _Binding(symbol=f"_v{len(bindings)}", parts=used, datatype=datatype)
            bindings[used] = binding
        # Replace the known prefix; any remaining parts stay as rule-engine attributes.
        pieces.append(text[cursor : path.start])
        written += path.start - cursor
        end = path.ends[len(used) - 1]
        spans.append((written, len(binding.symbol), path.start, end - path.start))
        pieces.append(binding.symbol)
        written += len(binding.symbol)
        cursor = end
    pieces.append(text[cursor:])
    rewritten = "".join(pieces)
    # Every path is now one flat symbol, so a `.name` left in the text is an attribute of a
    # value (a property that holds a mapping, an item of a list): only rule-engine's own
    # attributes (`length`, `weekday`…) exist there; a key needs a subscript.
    tokens = _tokens(rewritten)
    for tok, following in itertools.pairwise(tokens):
        if (
            tok.type in ("ATTR", "ATTR_SAFE")
            and following.type == "SYMBOL"
            and following.value not in _BUILTIN_ATTRIBUTES
        ):
            column = _original_column(tok.lexpos, spans)
            raise ExpressionError(
                f"`.{following.value}` at column {column}: a name inside a value needs a "
                f"subscript, e.g. [{following.value!r}] (dots reach only Nudge's own names "
                "and rule-engine attributes such as .length)",
                column=column,
            )
    context = rule_engine.Context(
        type_resolver=rule_engine.type_resolver_from_dict(
            {b.symbol: b.datatype for b in bindings.values()}
        ),
        default_timezone="utc",
        mapping_attribute_lookup=False,
    )
    names = {b.symbol: ".".join(b.parts) for b in bindings.values()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compiled = rule_engine.Rule(rewritten, context=context)
    except rule_engine.RuleSyntaxError as exc:
        token = getattr(exc, "token", None)
        column = _original_column(token.lexpos, spans) if token is not None else len(text) + 1
        raise ExpressionError(f"syntax error at column {column}", column=column) from exc
    except (rule_engine.EngineError, Warning) as exc:
        message = _unsymbol(getattr(exc, "message", str(exc)), names)
        if "nullable" in message:
            message += (
                " — a value that may be null needs a default, e.g. "
                "(customer.stats.days_since_last_order ?? 0) > 30"
            )
        raise ExpressionError(message) from exc
    if result == "boolean" and compiled.statement.expression.result_type not in (
        DataType.BOOLEAN,
        DataType.UNDEFINED,
    ):
        raise ExpressionError(
            f"the expression gives {compiled.statement.expression.result_type.name.lower()}, "
            "not true/false"
        )
    return Expression(
        text=text,
        rule=compiled,
        bindings=tuple(bindings.values()),
        fast=_fast(compiled.statement.expression),
    )


def _original_column(position: int, spans: list[tuple[int, int, int, int]]) -> int:
    """1-based column in the marketer's text of ``position`` in the rewritten text."""
    shift = 0
    for rewritten_start, rewritten_len, original_start, original_len in spans:
        if position < rewritten_start:
            break
        if position < rewritten_start + rewritten_len:
            return original_start + 1
        shift += rewritten_len - original_len
    return position - shift + 1


def _unsymbol(message: str, names: Mapping[str, str]) -> str:
    for symbol, name in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(symbol, name)
    return message


_OPS = {
    "and": "and",
    "or": "or",
    "eq": "==",
    "ne": "!=",
    "gt": ">",
    "ge": ">=",
    "lt": "<",
    "le": "<=",
    "eq_fzm": "=~",
    "eq_fzs": "=~~",
    "ne_fzm": "!~",
    "ne_fzs": "!~~",
    "add": "+",
    "sub": "-",
    "mul": "*",
    "truediv": "/",
    "floordiv": "//",
    "mod": "%",
    "pow": "**",
    "in": "in",
    "coalesce": "??",
}


def _render(node: Any, names: Mapping[str, str]) -> str:
    kind = type(node).__name__
    if kind == "SymbolExpression":
        return names.get(node.name, node.name)
    if hasattr(node, "left") and hasattr(node, "right"):
        op = _OPS.get(getattr(node, "type", ""), getattr(node, "type", "?"))
        return f"{_render(node.left, names)} {op} {_render(node.right, names)}"
    if kind == "UnaryExpression":
        return f"{node.type} {_render(node.right, names)}"
    if hasattr(node, "value") and not callable(node.value):
        value = node.value
        return repr(str(value)) if isinstance(value, str) else str(value)
    return kind.removesuffix("Expression").lower()


def _walk(
    node: Any, thing: Mapping[str, Any], names: Mapping[str, str], out: list[tuple[str, Any]]
) -> None:
    try:
        value: Any = node.evaluate(thing)
    except rule_engine.EngineError as exc:
        value = f"error: {_unsymbol(getattr(exc, 'message', str(exc)), names)}"
    if isinstance(value, datetime):
        value = value.isoformat()
    out.append((_render(node, names), value))
    for child in ("left", "right"):
        sub = getattr(node, child, None)
        if sub is not None and type(node).__name__ in (
            "LogicExpression",
            "ComparisonExpression",
            "ArithmeticComparisonExpression",
            "FuzzyComparisonExpression",
            "AddExpression",
            "SubtractExpression",
            "ArithmeticExpression",
            "ContainsExpression",
            "CoalesceExpression",
        ):
            _walk(sub, thing, names, out)
