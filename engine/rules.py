"""Rules: ``rules/*.yaml`` → frozen, typed, compiled :class:`Rule` objects.

Everything is checked at load (and by ``nudge validate``): unknown keys, types, durations,
cron expressions, expressions against the context schema, templates that do not exist,
duplicate ids, steps that can never run. Each finding is a :class:`~engine.locations.Problem`
with file, line and column. A file with an error is skipped whole; the others load.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from engine.durations import format_duration, parse_duration
from engine.expressions import Expression, ExpressionError, Scope, compile_expression
from engine.locations import (
    LocatedDict,
    LocatedList,
    Problem,
    load_located,
    locate,
    value_style,
)

if TYPE_CHECKING:
    from engine.config import SensitiveSettings
    from engine.rendering import Renderer

__all__ = [
    "CHANNELS",
    "ExitOn",
    "Goal",
    "Rule",
    "RuleSet",
    "Step",
    "Trigger",
    "Variant",
    "load_rules",
]

CHANNELS = ("email", "push", "sms")
SEGMENTS_FILE = "segments.yaml"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


# -- the YAML schema (pydantic) ------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _condition_text(value: Any) -> Any:
    """YAML reads ``if: false`` as a boolean; it is the expression ``false``."""
    return str(value).lower() if isinstance(value, bool) else value


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


class TriggerSpec(_Spec):
    event: str | None = None
    where: str | None = None
    key: str | None = None
    on_repeat: Literal["restart", "ignore", "parallel"] = "restart"
    schedule: str | None = None
    timezone: str = "customer"
    audience: str | None = None

    @model_validator(mode="after")
    def _kind(self) -> TriggerSpec:
        if (self.event is None) == (self.schedule is None):
            raise ValueError("a trigger needs exactly one of `event` or `schedule`")
        if self.schedule is not None and (self.where or self.key):
            raise ValueError("`where` and `key` belong to event triggers; use `audience`")
        if self.event is not None and self.audience:
            raise ValueError("`audience` belongs to schedule triggers; use `where` or `if`")
        if self.timezone != "customer":
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"timezone must be `customer` or an IANA zone, not {self.timezone!r}"
                ) from exc
        return self


class ExitSpec(_Spec):
    event: str
    key: bool = True
    where: str | None = None


class StepSpec(_Spec):
    wait: timedelta = timedelta(0)
    channel: Literal["email", "push", "sms"]
    template: str
    if_: str | None = Field(None, alias="if")

    _wait = field_validator("wait", mode="before")(_duration)
    _if = field_validator("if_", mode="before")(_condition_text)


class VariantSpec(_Spec):
    id: str
    weight: float = Field(1.0, gt=0)
    template: str | None = None


class CapSpec(_Spec):
    max: int = Field(ge=1)
    per: timedelta
    channel: Literal["email", "push", "sms", "any"] = "any"
    on_limit: Literal["skip", "defer"] = "skip"

    _per = field_validator("per", mode="before")(_duration)


class GoalSpec(_Spec):
    event: str = "Order Completed"
    within: timedelta = timedelta(days=5)
    where: str | None = None

    _within = field_validator("within", mode="before")(_duration)


class RuleSpec(_Spec):
    id: str
    description: str = ""
    enabled: bool = True
    trigger: TriggerSpec
    exit_on: list[ExitSpec] = Field(default_factory=list)
    if_: str | None = Field(None, alias="if")
    steps: list[StepSpec] | None = None
    wait: timedelta | None = None
    channel: Literal["email", "push", "sms"] | None = None
    template: str | None = None
    priority: int = Field(50, ge=0, le=1000)
    caps: list[CapSpec] = Field(default_factory=list)
    variants: list[VariantSpec] = Field(default_factory=list)
    holdout: float = 0.0
    goal: GoalSpec = Field(default_factory=GoalSpec)
    declare: dict[str, list[str]] = Field(default_factory=dict)
    uses_sensitive: list[str] = Field(default_factory=list)

    _wait = field_validator("wait", mode="before")(lambda v: None if v is None else _duration(v))
    _if = field_validator("if_", mode="before")(_condition_text)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("an id is 1-64 lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("holdout", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            value = float(value.strip()[:-1]) / 100
        if isinstance(value, int | float) and not 0 <= value < 1:
            raise ValueError("holdout is a share below 100%: `10%` or 0.1")
        return value

    @model_validator(mode="after")
    def _shape(self) -> RuleSpec:
        shorthand = (self.channel, self.template)
        if self.steps is None and None in shorthand:
            raise ValueError("a rule needs `steps`, or `channel` and `template` for one step")
        if self.steps is not None and (self.channel or self.template or self.wait is not None):
            raise ValueError("use either `steps` or the one-step `wait`/`channel`/`template`")
        if self.steps is not None and not self.steps:
            raise ValueError("`steps` must list at least one step")
        return self


# -- compiled rules ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Trigger:
    event: str | None
    where: Expression | None
    key: Expression | None
    on_repeat: str
    schedule: str | None
    timezone: str
    audience: Expression | None

    @property
    def is_schedule(self) -> bool:
        return self.schedule is not None


@dataclass(frozen=True, kw_only=True)
class ExitOn:
    event: str
    match_key: bool
    where: Expression | None


@dataclass(frozen=True, kw_only=True)
class Step:
    index: int
    wait: timedelta
    offset: timedelta  # from the trigger: the sum of waits up to and including this step
    channel: str
    template: str
    condition: Expression | None


@dataclass(frozen=True, kw_only=True)
class Variant:
    """An A/B arm; ``templates`` maps step index → the template it uses instead."""

    id: str
    weight: float
    template: str | None
    templates: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Goal:
    event: str
    within: timedelta
    where: Expression | None


@dataclass(frozen=True, kw_only=True)
class Rule:
    id: str
    description: str
    enabled: bool
    trigger: Trigger
    exit_on: tuple[ExitOn, ...]
    condition: Expression | None
    steps: tuple[Step, ...]
    priority: int
    caps: tuple[CapSpec, ...]
    variants: tuple[Variant, ...]
    holdout: float
    goal: Goal
    file: str
    line: int
    uses_sensitive: tuple[str, ...] = ()

    def template_for(self, step: Step, variant: str | None) -> str:
        """The template a step renders for ``variant``: a variant's template replaces the
        template of every step whose channel it has a file for."""
        for v in self.variants:
            if v.id == variant:
                return v.templates.get(step.index, step.template)
        return step.template


@dataclass(frozen=True)
class RuleSet:
    """The rules that loaded, and every problem found (errors and warnings)."""

    rules: tuple[Rule, ...] = ()
    problems: tuple[Problem, ...] = ()
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    def by_id(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def for_event(self, name: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled and r.trigger.event == name)


# -- loading ---------------------------------------------------------------------------------


def _at(
    raw: Any,
    loc: tuple[Any, ...],
    file: str,
    message: str,
    *,
    rule: str | None = None,
    key: bool = False,
    column_offset: int = 0,
    severity: str = "error",
) -> Problem:
    where = locate(raw, loc, key=key)
    return Problem(
        file=file,
        line=where.line,
        column=where.column + column_offset,
        message=message,
        severity=severity,
        rule=rule,
    )


def _template_exists(templates_dir: Path, name: str, channel: str) -> bool:
    return (templates_dir / f"{name}.{channel}.j2").is_file()


def _field_suggestion(loc: tuple[Any, ...], bad: str) -> str:
    models: dict[str, type[BaseModel]] = {
        "trigger": TriggerSpec,
        "exit_on": ExitSpec,
        "steps": StepSpec,
        "variants": VariantSpec,
        "caps": CapSpec,
        "goal": GoalSpec,
    }
    model: type[BaseModel] = RuleSpec
    for part in loc[:-1]:
        if isinstance(part, str) and part in models:
            model = models[part]
    names = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(bad, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(sorted(names))}"


def _spec_problems(
    exc: PydanticValidationError, raw: Any, prefix: tuple[Any, ...], file: str, rule: str | None
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}{_field_suggestion(loc, str(loc[-1]))}"
            problems.append(_at(raw, prefix + loc, file, message, rule=rule, key=True))
            continue
        path = ".".join(str(p) for p in loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(
            _at(raw, prefix + loc, file, f"{path}: {message}" if path else message, rule=rule)
        )
    return problems


def _expr(
    text: str | None,
    *,
    raw: Any,
    loc: tuple[Any, ...],
    file: str,
    rule: str,
    scope: frozenset[str],
    declared: dict[str, frozenset[str]],
    problems: list[Problem],
    result: str = "boolean",
) -> Expression | None:
    if text is None:
        return None
    try:
        return compile_expression(text, scope=scope, declared=declared, result=result)
    except ExpressionError as exc:
        name = ".".join(str(p) for p in loc if not isinstance(p, int))
        style = value_style(raw, loc)
        if style in ("'", '"'):
            problems.append(
                _at(raw, loc, file, f"{name}: {exc.message}", rule=rule, column_offset=exc.column)
            )
        elif style in ("|", ">"):
            # A block scalar: point at its first line (the folded text has lost the layout).
            where = locate(raw, loc)
            problems.append(
                Problem(
                    file=file,
                    line=where.line + 1,
                    column=1,
                    message=f"{name}: {exc.message} (at character {exc.column} of the expression)",
                    rule=rule,
                )
            )
        else:
            problems.append(
                _at(
                    raw,
                    loc,
                    file,
                    f"{name}: {exc.message}",
                    rule=rule,
                    column_offset=exc.column - 1,
                )
            )
        return None


def _compile(
    spec: RuleSpec, raw: Any, prefix: tuple[Any, ...], file: str, templates_dir: Path
) -> tuple[Rule | None, list[Problem]]:
    problems: list[Problem] = []
    rid = spec.id
    declared = {owner: frozenset(names) for owner, names in spec.declare.items()}
    for owner in declared:
        if owner not in ("event.properties", "customer.traits"):
            message = (
                "declare: only event.properties and customer.traits take declared names, "
                f"not {owner!r}"
            )
            problems.append(
                _at(raw, (*prefix, "declare", owner), file, message, rule=rid, key=True)
            )
    t = spec.trigger
    scope = Scope.CUSTOMER if t.schedule else Scope.EVENT

    def expr(text: str | None, *loc: Any, result: str = "boolean") -> Expression | None:
        return _expr(
            text,
            raw=raw,
            loc=(*prefix, *loc),
            file=file,
            rule=rid,
            scope=scope,
            declared=declared,
            problems=problems,
            result=result,
        )

    if t.schedule is not None:
        if not croniter.is_valid(t.schedule):
            problems.append(
                _at(
                    raw,
                    (*prefix, "trigger", "schedule"),
                    file,
                    f"trigger.schedule: {t.schedule!r} is not a cron expression "
                    "(minute hour day-of-month month day-of-week, e.g. '0 9 * * TUE')",
                    rule=rid,
                )
            )
        else:
            try:
                croniter(t.schedule, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
            except CroniterBadDateError:
                problems.append(
                    _at(
                        raw,
                        (*prefix, "trigger", "schedule"),
                        file,
                        f"trigger.schedule: {t.schedule!r} never fires",
                        rule=rid,
                    )
                )
    trigger = Trigger(
        event=t.event,
        where=expr(t.where, "trigger", "where"),
        key=expr(t.key, "trigger", "key", result="any"),
        on_repeat=t.on_repeat,
        schedule=t.schedule,
        timezone=t.timezone,
        audience=expr(t.audience, "trigger", "audience"),
    )
    exits = tuple(
        ExitOn(
            event=e.event,
            match_key=e.key,
            # An exit condition looks at the exit event, whatever the trigger kind.
            where=_expr(
                e.where,
                raw=raw,
                loc=(*prefix, "exit_on", i, "where"),
                file=file,
                rule=rid,
                scope=Scope.EVENT,
                declared=declared,
                problems=problems,
            ),
        )
        for i, e in enumerate(spec.exit_on)
    )
    step_specs = spec.steps or [
        StepSpec(
            wait=spec.wait or timedelta(0),
            channel=spec.channel or "email",
            template=spec.template or "",
        )
    ]
    steps = []
    offset = timedelta(0)
    for i, s in enumerate(step_specs):
        offset += s.wait
        loc = ("steps", i) if spec.steps is not None else ()
        steps.append(
            Step(
                index=i,
                wait=s.wait,
                offset=offset,
                channel=s.channel,
                template=s.template,
                condition=expr(s.if_, *loc, "if"),
            )
        )
        if not _template_exists(templates_dir, s.template, s.channel):
            problems.append(
                _at(
                    raw,
                    (*prefix, *loc, "template"),
                    file,
                    f"template {s.template!r} not found: expected "
                    f"{templates_dir / f'{s.template}.{s.channel}.j2'}",
                    rule=rid,
                )
            )
        if s.if_ is not None and s.if_.strip().lower() == "false":
            problems.append(
                _at(
                    raw,
                    (*prefix, *loc, "if"),
                    file,
                    f"step {i + 1} can never run (its `if` is false)",
                    rule=rid,
                )
            )
    seen_variants: set[str] = set()
    for i, v in enumerate(spec.variants):
        if v.id in seen_variants:
            problems.append(
                _at(
                    raw,
                    (*prefix, "variants", i, "id"),
                    file,
                    f"duplicate variant id {v.id!r}",
                    rule=rid,
                )
            )
        seen_variants.add(v.id)
    for i, v in enumerate(spec.variants):
        if v.template is None:
            continue
        channels = {s.channel for s in steps}
        if not any(_template_exists(templates_dir, v.template, c) for c in channels):
            problems.append(
                _at(
                    raw,
                    (*prefix, "variants", i, "template"),
                    file,
                    f"variant {v.id!r}: template {v.template!r} not found for any of "
                    f"this rule's channels ({', '.join(sorted(channels))})",
                    rule=rid,
                )
            )
    if t.event and any(e.event == t.event and e.match_key and e.where is None for e in exits):
        problems.append(
            _at(
                raw,
                (*prefix, "exit_on"),
                file,
                f"exit_on {t.event!r} is also the trigger: every journey would end "
                "at once and no step could ever run",
                rule=rid,
            )
        )
    if spec.if_ is not None and spec.if_.strip().lower() == "false":
        problems.append(
            _at(raw, (*prefix, "if"), file, "the rule can never run (its `if` is false)", rule=rid)
        )
    goal = Goal(
        event=spec.goal.event,
        within=spec.goal.within,
        where=_expr(
            spec.goal.where,
            raw=raw,
            loc=(*prefix, "goal", "where"),
            file=file,
            rule=rid,
            scope=Scope.EVENT,
            declared=declared,
            problems=problems,
        ),
    )
    condition = expr(spec.if_, "if")
    if any(p.severity == "error" for p in problems):
        return None, problems
    line = locate(raw, prefix).line
    return (
        Rule(
            id=rid,
            description=spec.description,
            enabled=spec.enabled,
            trigger=trigger,
            exit_on=exits,
            condition=condition,
            steps=tuple(steps),
            priority=spec.priority,
            caps=tuple(spec.caps),
            variants=tuple(
                Variant(
                    id=v.id,
                    weight=v.weight,
                    template=v.template,
                    templates={
                        st.index: v.template
                        for st in steps
                        if v.template and _template_exists(templates_dir, v.template, st.channel)
                    },
                )
                for v in spec.variants
            ),
            holdout=spec.holdout,
            goal=goal,
            file=file,
            line=line,
            uses_sensitive=tuple(spec.uses_sensitive),
        ),
        problems,
    )


_CATEGORIES = "categories"
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _covered(path: str, allowed: Iterable[str]) -> bool:
    return any(path == a or path.startswith(a + ".") for a in allowed)


def _sensitive_problems(
    rule: Rule,
    spec: RuleSpec,
    raw: Any,
    prefix: tuple[Any, ...],
    file: str,
    renderer: Renderer | None,
    sensitive: SensitiveSettings,
) -> list[Problem]:
    """The creepiness guard: a rule may read a sensitive attribute, or single out a
    sensitive product category, only if it says so in ``uses_sensitive``; a rule that
    messages soon after a mere browsing event gets a warning."""
    problems: list[Problem] = []
    attributes = sensitive.attributes
    categories = {c.lower() for c in sensitive.categories}
    allowed = set(rule.uses_sensitive)
    for i, name in enumerate(spec.uses_sensitive):
        if name != _CATEGORIES and not _covered(name, attributes):
            choices = [*attributes, _CATEGORIES]
            close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; one of: {', '.join(choices)}"
            problems.append(
                _at(
                    raw,
                    (*prefix, "uses_sensitive", i),
                    file,
                    f"uses_sensitive: {name!r} is not a sensitive attribute{hint}",
                    rule=rule.id,
                )
            )

    def needs(path: str) -> str | None:
        """The sensitive attribute ``path`` reads (it, a part of it, or a map holding it —
        except a bare root such as ``customer``), unless the rule declared it."""
        for attribute in attributes:
            reads = _covered(path, [attribute]) or ("." in path and _covered(attribute, [path]))
            if reads and not _covered(attribute, allowed) and not _covered(path, allowed):
                return attribute
        return None

    expressions: list[tuple[tuple[Any, ...], Expression | None]] = [
        (("trigger", "where"), rule.trigger.where),
        (("trigger", "key"), rule.trigger.key),
        (("trigger", "audience"), rule.trigger.audience),
        (("if",), rule.condition),
        (("goal", "where"), rule.goal.where),
        *((("exit_on", i, "where"), x.where) for i, x in enumerate(rule.exit_on)),
        *((("steps", s.index, "if"), s.condition) for s in rule.steps if spec.steps),
    ]
    for loc, expression in expressions:
        if expression is None:
            continue
        for parts in expression.paths:
            attribute = needs(".".join(parts))
            if attribute is not None:
                problems.append(
                    _at(
                        raw,
                        (*prefix, *loc),
                        file,
                        f"`{expression.text}` reads the sensitive attribute {attribute}: "
                        f"add `uses_sensitive: [{attribute}]` to the rule if this is intended",
                        rule=rule.id,
                    )
                )
        literals = {(a or b).lower() for a, b in _QUOTED.findall(expression.text)}
        hit = sorted(literals & categories)
        if hit and _CATEGORIES not in allowed:
            problems.append(
                _at(
                    raw,
                    (*prefix, *loc),
                    file,
                    f"`{expression.text}` singles out the sensitive category {hit[0]!r}: add "
                    f"`uses_sensitive: [{_CATEGORIES}]` to the rule if this is intended",
                    rule=rule.id,
                )
            )
    if renderer is not None:
        templates = {(s.index, s.template, s.channel) for s in rule.steps}
        templates |= {
            (s.index, rule.template_for(s, v.id), s.channel)
            for v in rule.variants
            for s in rule.steps
        }
        for index, name, channel in sorted(templates):
            if not renderer.has(name, channel):
                continue
            for path in sorted(renderer.paths(name, channel)):
                attribute = needs(path)
                if attribute is not None:
                    loc = ("steps", index, "template") if spec.steps else ("template",)
                    problems.append(
                        _at(
                            raw,
                            (*prefix, *loc),
                            file,
                            f"template {name}.{channel}.j2 reads the sensitive attribute "
                            f"{attribute}: add `uses_sensitive: [{attribute}]` to the rule "
                            "if this is intended",
                            rule=rule.id,
                        )
                    )
    first = rule.steps[0] if rule.steps else None
    if (
        first is not None
        and rule.trigger.event in sensitive.view_events
        and first.offset < sensitive.min_wait_after_view
    ):
        loc = ("steps", 0, "wait") if spec.steps else ("trigger", "event")
        problems.append(
            _at(
                raw,
                (*prefix, *loc),
                file,
                f"the first message goes out {format_duration(first.offset)} after a mere "
                f"{rule.trigger.event}; at least {format_duration(sensitive.min_wait_after_view)} "
                "feels less like being watched",
                rule=rule.id,
                severity="warning",
            )
        )
    return problems


def _load_file(
    path: Path,
    templates_dir: Path,
    display: str,
    renderer: Renderer | None = None,
    sensitive: SensitiveSettings | None = None,
) -> tuple[list[Rule], list[Problem]]:
    try:
        raw = load_located(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [Problem(file=display, line=line, column=column, message=f"YAML: {problem}")]
    except OSError as exc:
        return [], [Problem(file=display, line=1, column=1, message=f"cannot read: {exc.strerror}")]
    if raw is None:
        return [], [
            Problem(file=display, line=1, column=1, message="the file is empty", severity="warning")
        ]
    items = raw if isinstance(raw, LocatedList) else [raw]
    rules: list[Rule] = []
    problems: list[Problem] = []
    for i, item in enumerate(items):
        prefix: tuple[Any, ...] = (i,) if isinstance(raw, LocatedList) else ()
        if not isinstance(item, LocatedDict):
            where = locate(raw, prefix)
            problems.append(
                Problem(
                    file=display,
                    line=where.line,
                    column=where.column,
                    message="a rule must be a mapping of keys (id, trigger, steps, ...)",
                )
            )
            continue
        rid = item.get("id") if isinstance(item.get("id"), str) else None
        try:
            spec = RuleSpec.model_validate(dict(item))
        except PydanticValidationError as exc:
            problems += _spec_problems(exc, raw, prefix, display, rid)
            continue
        rule, found = _compile(spec, raw, prefix, display, templates_dir)
        if rule is not None and sensitive is not None:
            found += _sensitive_problems(rule, spec, raw, prefix, display, renderer, sensitive)
            if any(p.severity == "error" for p in found):
                rule = None
        problems += found
        if rule is not None:
            rules.append(rule)
    return rules, problems


def load_rules(
    rules_dir: Path,
    templates_dir: Path,
    *,
    paths: Iterable[Path] | None = None,
    renderer: Renderer | None = None,
    sensitive: SensitiveSettings | None = None,
) -> RuleSet:
    """Load every ``*.yaml``/``*.yml`` under ``rules_dir`` (or just ``paths``).

    With ``sensitive`` (the creepiness guard's settings) a rule that reads a sensitive
    attribute — in an expression, or in a template through ``renderer`` — without declaring
    it in ``uses_sensitive`` is an error.

    A file with any error contributes no rules (a half-loaded file would be surprising);
    the other files load. Duplicate ids: the first file (by name) wins, the rest are errors.
    """
    if paths is None:
        paths = sorted(
            p
            for p in [*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")]
            if p.name != SEGMENTS_FILE
        )
    rules: list[Rule] = []
    problems: list[Problem] = []
    seen: dict[str, Rule] = {}
    for path in paths:
        display = str(path)
        file_rules, file_problems = _load_file(path, templates_dir, display, renderer, sensitive)
        problems += file_problems
        if any(p.severity == "error" for p in file_problems):
            continue
        for rule in file_rules:
            if rule.id in seen:
                first = seen[rule.id]
                problems.append(
                    Problem(
                        file=display,
                        line=rule.line,
                        column=1,
                        message=f"duplicate rule id {rule.id!r} (first defined at "
                        f"{first.file}:{first.line}); this one is skipped",
                        rule=rule.id,
                    )
                )
                continue
            seen[rule.id] = rule
            rules.append(rule)
    return RuleSet(rules=tuple(rules), problems=tuple(problems))
