"""YAML with source positions, so every error can name its file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Located",
    "LocatedDict",
    "LocatedList",
    "Problem",
    "load_located",
    "locate",
    "value_style",
]


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One finding about a marketer's file: ``severity`` is ``error`` or ``warning``."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"
    rule: str | None = None

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.file}:{self.line}:{self.column}: {tag}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
            "rule": self.rule,
        }


@dataclass(frozen=True)
class Located:
    line: int  # 1-based
    column: int  # 1-based


class LocatedDict(dict[Any, Any]):
    """A mapping that remembers where it and each of its keys and values are."""

    at: Located
    keys_at: dict[Any, Located]
    values_at: dict[Any, Located]
    styles: dict[Any, str | None]  # scalar style of each value: None, "'", '"', "|", ">"


class LocatedList(list[Any]):
    at: Located
    items_at: list[Located]


def _mark(node: yaml.Node) -> Located:
    return Located(node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.at, out.keys_at, out.values_at, out.styles = _mark(node), {}, {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.keys_at[key] = _mark(key_node)
        out.values_at[key] = _mark(value_node)
        out.styles[key] = getattr(value_node, "style", None)
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    out = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    out.at = _mark(node)
    out.items_at = [_mark(child) for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_located(path: Path) -> Any:
    """Parse one YAML file into Located containers; ``yaml.YAMLError`` carries the mark."""
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_Loader)


def locate(root: Any, loc: tuple[Any, ...], *, key: bool = False) -> Located:
    """The position of the value (or, with ``key``, of the key) at ``loc`` under ``root``.

    Walks as deep as the path exists and returns the deepest position found.
    """
    best = getattr(root, "at", Located(1, 1))
    node = root
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, LocatedDict) and part in node:
            best = node.keys_at[part] if (key and last) else node.values_at[part]
            node = node[part]
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            best = node.items_at[part]
            node = node[part]
        else:
            break
    return best


def value_style(root: Any, loc: tuple[Any, ...]) -> str | None:
    """The YAML scalar style of the value at ``loc`` (None: plain, or not found)."""
    node = root
    for part in loc[:-1]:
        if isinstance(node, dict | list) and (
            (isinstance(node, dict) and part in node)
            or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        ):
            node = node[part]
        else:
            return None
    if isinstance(node, LocatedDict) and loc and loc[-1] in node.styles:
        return node.styles[loc[-1]]
    return None
