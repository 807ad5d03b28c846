"""Message templates: compiled once, rendered in Jinja's sandbox with limits.

A message is ``templates/<name>.<channel>.j2`` whose blocks are its parts (``subject``,
``html``, ``text`` for email; ``title``, ``body``, ``url`` for push); any other ``*.j2`` is a
partial a message may include, extend or import. :meth:`Renderer.load` compiles every file
once and reports a broken one as a :class:`~engine.locations.Problem` without disabling the
others; :meth:`Renderer.render` never reads a file and turns every failure into a
:class:`~engine.errors.RenderError` naming the template line.

Escaping: each file is compiled twice, in an environment with HTML autoescape (for the email
``html`` block) and one without (for every plain-text block), so a name such as ``Tom & Jerry``
is escaped in HTML and left alone in a subject, a text body or a push. To render a message, the
template's top level runs first with its blocks skipped (it defines macros, imports, sets and
follows ``{% extends %}``), then each block the environment owns is rendered on its own from
that context. Whitespace: ``trim_blocks`` and ``lstrip_blocks`` are on, and each part is stripped.

Limits: output is counted in UTF-8 bytes chunk by chunk as blocks stream and stops past
``max_output_bytes``; ``*``, ``**`` and ``+`` refuse to build values beyond it. The time limit
is *cooperative*: Jinja offers no way to preempt a render and a Python thread cannot be
killed, so the deadline is checked wherever a template can spend time — every call (functions,
methods, macros), every iteration of every ``{% for %}`` loop and of ``range()`` (bounded by the
sandbox's ``MAX_RANGE``), every operator above and every output chunk. Work done inside one
builtin (a filter such as ``center(10**8)``, or ``~`` concatenation) is not interrupted; a
worker with an OS memory limit is the hard backstop.
"""

from __future__ import annotations

import difflib
import time
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
    pass_context,
)
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, safe_range

from engine.context import CustomerFacts, TriggerFacts, refresh_stats
from engine.errors import RenderError
from engine.locations import Problem

__all__ = ["CHANNEL_BLOCKS", "Rendered", "Renderer", "template_context"]

CHANNEL_BLOCKS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "html", "text"),
    "push": ("title", "body", "url"),
    "sms": ("body",),
}
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {  # each group: at least one of these
    "email": (("subject",), ("html", "text")),
    "push": (("title",), ("body",)),
    "sms": (("body",),),
}
_LOOP_FILTER = "_nudge_loop"  # wraps every {% for %} iterable to check the deadline
_NOT_DATA = frozenset({"link", "unsubscribe_url", "self", "super"})

_Block = Callable[[Context], Iterator[str]]


@dataclass(frozen=True, kw_only=True)
class Rendered:
    template: str
    channel: str
    content: dict[str, str]
    links: tuple[str, ...]


class _Stop(TemplateError):
    """A render limit was reached."""


@dataclass(kw_only=True)
class _Run:
    """One render's budget and results; reached through :data:`_RUN` from Jinja's hooks."""

    deadline: float
    seconds: float
    max_bytes: int
    used: int = 0
    root: Context | None = None  # set while the top level runs: its blocks are skipped
    parts: dict[str, list[str]] = field(default_factory=dict)
    links: dict[str, None] = field(default_factory=dict)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Stop(f"rendering took longer than {self.seconds:g}s (the time limit)")

    def capture(self, name: str, chunks: Iterator[str]) -> None:
        for chunk in chunks:
            self.used += len(chunk.encode("utf-8", "surrogatepass"))
            try:
                if self.used > self.max_bytes:
                    raise _Stop(f"output is larger than {self.max_bytes} bytes (the size limit)")
                self.tick()
            except _Stop as stop:
                throw = getattr(chunks, "throw", None)  # raise it at the template line
                if throw is not None:
                    throw(stop)
                raise
            self.parts.setdefault(name, []).append(chunk)


_RUN: ContextVar[_Run | None] = ContextVar("nudge_render", default=None)


def _ticking(items: Iterable[Any]) -> Iterator[Any]:
    run = _RUN.get()
    for item in items:
        if run is not None:
            run.tick()
        yield item


@pass_context
def _loop(_context: Context, items: Any) -> Iterator[Any]:
    return _ticking(items)


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value)
    if isinstance(value, int):
        return abs(value).bit_length() // 8
    return 0


def _too_big(operator: str, left: Any, right: Any, limit: int) -> bool:
    """Whether ``left <operator> right`` would build a value over ``limit`` bytes."""
    if operator == "+":
        return _size(left) + _size(right) > limit
    if isinstance(left, int) and isinstance(right, int):
        if operator == "**":
            return right > 0 and abs(left) > 1 and abs(left).bit_length() * right > 8 * limit
        return abs(left).bit_length() + abs(right).bit_length() > 8 * limit
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
            return len(seq) * times > limit
    return False


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, loader: _Loader, *, html: bool, max_bytes: int) -> None:
        super().__init__(
            loader=loader,
            autoescape=html,
            undefined=StrictUndefined,
            auto_reload=False,  # compiled once: render never looks at the files again
            cache_size=-1,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.max_bytes = max_bytes
        self.globals["range"] = self._range
        self.filters[_LOOP_FILTER] = _loop

    def _range(self, *args: int) -> Iterator[int]:
        return _ticking(safe_range(*args))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Jinja's internal (long-stable) parse step is the one place to rewrite the tree
        # before it compiles: every loop's iterable goes through the deadline check.
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            wrapped = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None)
            loop.iter = wrapped.set_lineno(loop.iter.lineno).set_environment(self)
        return tree

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        run = _RUN.get()
        if run is not None:
            run.tick()
        result = super().call(__context, __obj, *args, **kwargs)
        if _size(result) > __self.max_bytes:
            raise _Stop(f"a value is larger than {__self.max_bytes} bytes (the size limit)")
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        run = _RUN.get()
        if run is not None:
            run.tick()
        if _too_big(operator, left, right, self.max_bytes):
            raise _Stop(f"'{operator}' would build a value over {self.max_bytes} bytes")
        return super().call_binop(context, operator, left, right)


def _skippable(block: _Block) -> _Block:
    def render(context: Context) -> Iterator[str]:
        run = _RUN.get()
        if run is not None and run.root is context:
            return  # the top level is running: each block is rendered on its own afterwards
        yield from block(context)

    return render


class _Loader(FileSystemLoader):
    def load(
        self,
        environment: Environment,
        name: str,
        globals: MutableMapping[str, Any] | None = None,
    ) -> Template:
        template = super().load(environment, name, globals)
        template.blocks = {key: _skippable(fn) for key, fn in template.blocks.items()}
        return template


def _chain(node: nodes.Node, visit: Callable[[nodes.Node], None]) -> list[str] | None:
    """``["customer", "traits", "birthday"]`` for ``customer.traits["birthday"]``; the part
    before a dynamic subscript is read whole; None (after visiting it) if not from a name."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                parts.append(node.arg.value)
            else:
                visit(node.arg)
                parts.clear()
        elif isinstance(node, nodes.Name):
            return [node.name, *reversed(parts)] if node.ctx == "load" else None
        else:
            visit(node)
            return None
        node = node.node


def _reads(tree: nodes.Template, roots: Collection[str]) -> set[str]:
    """Dotted paths read from the context names ``roots`` (method calls read their object;
    ``x.get("key")`` reads ``x.key``)."""
    found: set[str] = set()

    def keep(path: list[str] | None) -> None:
        if path and path[0] in roots:
            found.add(".".join(path))

    def visit(node: nodes.Node) -> None:
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            path = _chain(node.node.node, visit)
            key = node.args[0] if node.node.attr == "get" and node.args else None
            if path and isinstance(key, nodes.Const) and isinstance(key.value, str):
                path.append(key.value)
            keep(path)
            arguments: list[nodes.Node | None] = [*node.args, *node.kwargs]
            for child in [*arguments, node.dyn_args, node.dyn_kwargs]:
                if child is not None:
                    visit(child)
        elif isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name):
            keep(_chain(node, visit))
        else:
            for child in node.iter_child_nodes():
                visit(child)

    visit(tree)
    return found


def _references(tree: nodes.Template) -> Iterator[tuple[nodes.Node, str, bool]]:
    """Each constant template name ``tree`` extends, includes or imports, and whether a
    missing one is allowed."""
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        target = node.template  # type: ignore[attr-defined]
        names = target.items if isinstance(target, nodes.List | nodes.Tuple) else [target]
        optional = bool(getattr(node, "ignore_missing", False)) or len(names) > 1
        for item in names:
            if isinstance(item, nodes.Const) and isinstance(item.value, str):
                yield node, item.value, optional


def _defined(tree: nodes.Template) -> set[str]:
    """Names ``tree`` defines at its top level (sets, macros, imports), which its blocks and
    the templates it includes read like context variables."""
    names: set[str] = set()

    def visit(node: nodes.Node) -> None:
        if isinstance(node, nodes.Macro):
            names.add(node.name)
        elif isinstance(node, nodes.Import):
            names.add(node.target)
        elif isinstance(node, nodes.FromImport):
            names.update(n if isinstance(n, str) else n[1] for n in node.names)
        elif isinstance(node, nodes.Name) and node.ctx == "store":
            names.add(node.name)
        if not isinstance(
            node, nodes.Macro | nodes.Block | nodes.For | nodes.CallBlock | nodes.With
        ):
            for child in node.iter_child_nodes():
                visit(child)

    visit(tree)
    return names


@dataclass
class _Message:
    html: Template
    plain: Template
    paths: frozenset[str]


class Renderer:
    """The templates of one folder. ``hidden_categories`` is kept for callers: filtering
    products is :func:`template_context`'s job, so a rule's opt-in can turn it off."""

    def __init__(
        self,
        templates_dir: Path,
        *,
        max_output_bytes: int = 256 * 1024,
        max_render_seconds: float = 2.0,
        hidden_categories: Collection[str] = (),
    ) -> None:
        self.templates_dir = Path(templates_dir)
        self.max_output_bytes = max_output_bytes
        self.max_render_seconds = max_render_seconds
        self.hidden_categories = frozenset(hidden_categories)
        self._loader = loader = _Loader(self.templates_dir)
        self._html = _Sandbox(loader, html=True, max_bytes=max_output_bytes)
        self._plain = _Sandbox(loader, html=False, max_bytes=max_output_bytes)
        self._messages: dict[tuple[str, str], _Message] = {}
        self._files: list[str] = []
        self._trees: dict[str, nodes.Template | None] = {}  # None: missing or broken
        self._broken: set[str] = set()
        self._found: dict[Problem, None] = {}  # in order, without repeats

    def _problem(self, name: str, line: int, message: str) -> Problem:
        # Shown like the rule files' problems: the path as the folder was given.
        return Problem(file=str(self.templates_dir / name), line=line, column=1, message=message)

    def load(self) -> list[Problem]:
        """Compile every ``*.j2`` once; the problems of the files that do not load."""
        if not self.templates_dir.is_dir():
            return [self._problem("", 1, "the templates folder does not exist")]
        self._files = sorted(p.name for p in self.templates_dir.glob("*.j2") if p.is_file())
        for name in self._files:
            base, _, channel = name.removesuffix(".j2").rpartition(".")
            tree = self._compile(name)
            if tree is not None and base and channel in CHANNEL_BLOCKS:
                self._check(name, tree, base, channel)
        return list(self._found)

    def _compile(self, name: str) -> nodes.Template | None:
        """The syntax tree of ``name``, compiled in both environments; None if it is
        missing or broken (the latter is a problem)."""
        if name not in self._trees:
            self._trees[name] = None
            try:
                self._html.get_template(name)
                self._plain.get_template(name)
                source = self._loader.get_source(self._plain, name)[0]
                self._trees[name] = self._plain.parse(source, name)
            except TemplateNotFound:
                pass
            except TemplateSyntaxError as exc:
                self._broken.add(name)
                self._found[self._problem(name, exc.lineno, f"syntax error: {exc.message}")] = None
            except Exception as exc:  # unreadable, not UTF-8, …: this file only
                self._broken.add(name)
                self._found[self._problem(name, 1, f"cannot load: {exc}")] = None
        return self._trees[name]

    def _check(self, name: str, tree: nodes.Template, base: str, channel: str) -> None:
        """Make message ``name`` available if what it references loads and it has the
        blocks its channel needs."""
        ok = True
        reached = {name: tree}
        todo = [name]
        while todo:
            current = todo.pop()
            for node, target, optional in _references(reached[current]):
                found = self._compile(target)
                if found is None and (target in self._broken or not optional):
                    ok = False
                    close = difflib.get_close_matches(target, self._files, n=1)
                    why = f"{target!r} does not exist" + (
                        f" (did you mean {close[0]!r}?)" if close else ""
                    )
                    if target in self._broken:
                        why = f"{target!r} does not compile"
                    self._found[self._problem(current, node.lineno, why)] = None
                elif found is not None and target not in reached:
                    reached[target] = found
                    todo.append(target)
        trees = list(reached.values())
        blocks: set[str] = set()
        todo = [name]
        seen: set[str] = set()
        while todo:  # the blocks of the message and of the templates it extends
            parent = reached.get(current := todo.pop())
            if parent is not None and current not in seen:
                seen.add(current)
                blocks |= {b.name for b in parent.find_all(nodes.Block)}
                todo += [t for n, t, _ in _references(parent) if isinstance(n, nodes.Extends)]
        for group in _REQUIRED[channel]:
            if not blocks & set(group):
                ok = False
                needed = " or ".join(f"{{% block {b} %}}" for b in group)
                self._found[
                    self._problem(
                        name,
                        1,
                        f"an {channel} template needs {needed}"
                        if channel == "email"
                        else f"a {channel} template needs {needed}",
                    )
                ] = None
        if ok:
            skip = set(self._plain.globals) | _NOT_DATA | {n for t in trees for n in _defined(t)}
            paths = {p for t in trees for p in _reads(t, meta.find_undeclared_variables(t) - skip)}
            self._messages[(base, channel)] = _Message(
                html=self._html.get_template(name),
                plain=self._plain.get_template(name),
                paths=frozenset(paths),
            )

    def has(self, name: str, channel: str) -> bool:
        return (name, channel) in self._messages

    def paths(self, name: str, channel: str) -> set[str]:
        """Dotted context paths the message reads, through constant includes, extends and
        imports (a path read whole may reach anything under it); empty if not loaded."""
        message = self._messages.get((name, channel))
        return set(message.paths) if message is not None else set()

    def render(
        self,
        name: str,
        channel: str,
        context: Mapping[str, Any],
        *,
        link: Callable[[str], str],
        unsubscribe_url: str,
    ) -> Rendered:
        """Render every part of the message; any failure is a :class:`RenderError`."""
        file = f"{name}.{channel}.j2"
        message = self._messages.get((name, channel))
        if message is None:
            known = [f"{n}.{c}.j2" for n, c in self._messages]
            close = difflib.get_close_matches(file, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RenderError(file, None, f"no such template is loaded{hint}")
        run = _Run(
            deadline=time.monotonic() + self.max_render_seconds,
            seconds=self.max_render_seconds,
            max_bytes=self.max_output_bytes,
        )

        def tracked(url: Any) -> str:
            if isinstance(url, Undefined):
                str(url)  # raises the undefined error
            if not isinstance(url, str) or not url:
                raise TypeError(f"link() needs a URL, not {url!r}")
            run.links.setdefault(str(url), None)
            return str(link(str(url)))

        variables = {**context, "link": tracked, "unsubscribe_url": str(unsubscribe_url)}
        blocks = CHANNEL_BLOCKS[channel]
        passes = [(message.plain, blocks)]
        if channel == "email":
            passes = [(message.html, ("html",)), (message.plain, ("subject", "text"))]
        token = _RUN.set(run)
        try:
            for template, wanted in passes:
                top = template.new_context(variables)
                run.root = top
                for _ in template.root_render_func(top):  # macros, imports, sets, extends
                    run.tick()
                run.root = None
                for block in wanted:
                    if block in top.blocks:
                        run.capture(block, top.blocks[block][0](top))
        except Exception as exc:
            raise _error(file, exc) from exc
        finally:
            _RUN.reset(token)
        return Rendered(
            template=file,
            channel=channel,
            content={b: "".join(run.parts.get(b, ())).strip() for b in blocks},
            links=tuple(run.links),
        )


def _error(file: str, exc: Exception) -> RenderError:
    """``exc`` as a RenderError at the deepest line of ``file`` on its traceback (noting the
    partial it happened in, if another)."""
    frames = [
        (template.name, template.get_corresponding_lineno(lineno))
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
        if isinstance(template := frame.f_globals.get("__jinja_template__"), Template)
    ]
    if isinstance(exc, TemplateSyntaxError):
        frames.append((exc.name, exc.lineno))
        text = f"syntax error: {exc.message}"
    elif type(exc) is TemplateNotFound:
        text = f"template {exc.name!r} not found"
    elif isinstance(exc, TemplateError):
        text = exc.message or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}"
    line = next((n for t, n in reversed(frames) if t == file), None)
    if frames and frames[-1][0] != file:
        text += f" (in {frames[-1][0]}, line {frames[-1][1]})"
    return RenderError(file, line, text)


def _shown(products: Any, hidden: Collection[str]) -> list[Any]:
    """``products`` (a list) without those of a hidden category; [] if not a list."""
    if not isinstance(products, list):
        return []
    return [
        p
        for p in products
        if not (
            isinstance(p, dict)
            and isinstance(p.get("category"), str)
            and p["category"].casefold() in hidden
        )
    ]


def template_context(
    customer: CustomerFacts,
    event: TriggerFacts | None,
    *,
    rule_id: str,
    rule_description: str,
    variant: str | None,
    now: datetime,
    abandoned_after: timedelta = timedelta(hours=1),
    hidden_categories: Collection[str] = (),
) -> dict[str, Any]:
    """The variables a template sees (pure). With hidden categories, ``products``,
    ``cart.products`` and ``event.properties.products`` all leave those products out."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    try:
        zone: tzinfo = ZoneInfo(customer.timezone)
    except (KeyError, ValueError, OSError):  # unknown or malformed zone name
        zone = UTC
    hidden = {c.casefold() for c in hidden_categories}
    props = event.properties if event is not None else {}
    raw = props.get("products")
    shown = _shown(raw, hidden)
    products = [p for p in shown if isinstance(p, dict)]
    if isinstance(raw, list) and len(shown) != len(raw):
        props = {**props, "products": shown}
    cart = None
    cart_id = props.get("cart_id")
    if cart_id is None:
        cart_id = props.get("checkout_id")
    if cart_id is not None:
        value = next(
            (props[k] for k in ("value", "total", "revenue") if props.get(k) is not None), None
        )
        cart = {
            "id": cart_id,
            "value": value,
            "currency": props.get("currency"),
            "url": props.get("url"),
            "products": products,
        }
    return {
        "customer": {
            "id": customer.display_id,
            "customer_id": customer.id,
            "email": customer.email,
            "first_name": customer.traits.get("first_name") or None,
            "traits": customer.traits,
            "consent": customer.consent,
            "timezone": customer.timezone,
            "stats": {
                **refresh_stats(customer.stats, now, abandoned_after),
                "lapse_ratio": customer.intel.get("lapse_ratio"),
            },
            "event_counts": customer.event_counts,
            # engine/intelligence, as rules see them (empty until first computed)
            "rfm": customer.intel.get("rfm") or {},
            "habits": customer.intel.get("habits") or {},
            "predicted": customer.intel.get("predicted") or {},
            "segments": customer.intel.get("segments") or [],
            "preferences": customer.intel.get("preferences") or {},
        },
        "event": None
        if event is None
        else {
            "name": event.name,
            "type": event.type,
            "timestamp": event.timestamp,
            "properties": props,
        },
        "products": products,
        "cart": cart,
        "rule": {"id": rule_id, "description": rule_description},
        "variant": variant,
        "now": now,
        "local_now": now.astimezone(zone),
    }
