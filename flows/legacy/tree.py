"""Rebuilding a legacy flow's tree from its job rows.

The legacy ``"FlowJob"`` table has no parent column and no job name. A parent's
``children`` column holds the BullMQ flow definitions it was created with
(``{name, queueName, data, opts, children}``); each definition is matched to a
row by queue and data (see ``values.signature``). The root is the row no
definition claims, and its name is the legacy ``"Flow".name``. A row whose data
could not be read (``data_unreadable``) matches a definition by queue alone, once
no row matches that definition's data.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flows.legacy.values import signature

# Trying a root costs one pass over the flow's rows: a few tries find it in any
# real flow, and a flow whose rows fit no tree does not cost O(rows²).
MAX_ROOT_TRIES = 8


class JobRow(Protocol):
    queue_name: str
    data: dict[str, Any]
    children: list[Any]


@dataclass(frozen=True)
class Placement:
    """Where a row sits in the tree. ``name`` is None when its definition had no name."""

    parent: int | None
    position: int
    name: str | None


@dataclass
class Tree:
    """Rows by index: the root, where each placed row sits, and what did not fit."""

    root: int | None
    placements: dict[int, Placement] = field(default_factory=dict)
    children: dict[int, list[int]] = field(default_factory=dict)
    unplaced: list[int] = field(default_factory=list)
    # (parent row, definition) for each child definition that matched no row.
    missing: list[tuple[int, Any]] = field(default_factory=list)


def rebuild_tree(*, root_name: str, rows: Sequence[JobRow]) -> Tree:
    """Return the tree that places the most rows (all of them, in any sound flow).

    ``rows`` come in creation order, which breaks ties between rows with the
    same queue and data: the earlier row matches the earlier definition.
    """
    if not rows:
        return Tree(root=None)
    keys = [signature(row.queue_name, row.data) for row in rows]
    definition_keys = _DefinitionKeys()
    best: Tree | None = None
    for candidate in _root_candidates(rows, keys, definition_keys)[:MAX_ROOT_TRIES]:
        tree = _grow(candidate, root_name, rows, keys, definition_keys)
        if not tree.unplaced:
            return tree
        if best is None or len(tree.unplaced) < len(best.unplaced):
            best = tree
    assert best is not None
    return best


class _DefinitionKeys(dict):
    """Each definition's signature, computed once per rebuild (keyed by the object's id)."""

    def of(self, definition: dict[str, Any]) -> tuple[str, Any]:
        key = self.get(id(definition))
        if key is None:
            data = definition.get("data")
            key = self[id(definition)] = signature(definition.get("queueName"), data if data is not None else {})
        return key


def _root_candidates(
    rows: Sequence[JobRow], keys: list[tuple[str, Any]], definition_keys: _DefinitionKeys
) -> list[int]:
    """Rows no definition claims come first: one of them is the root."""
    claims = Counter(definition_keys.of(d) for row in rows for d in row.children if isinstance(d, dict))
    seen: Counter[tuple[str, Any]] = Counter()
    unclaimed: list[int] = []
    claimed: list[int] = []
    for index, key in enumerate(keys):
        seen[key] += 1
        (claimed if seen[key] <= claims[key] else unclaimed).append(index)
    return unclaimed + claimed


def _grow(
    root: int, root_name: str, rows: Sequence[JobRow], keys: list[tuple[str, Any]], definition_keys: _DefinitionKeys
) -> Tree:
    """Place rows breadth-first from ``root``, each definition taking the first free match."""
    free: dict[tuple[str, Any], deque[int]] = {}
    unreadable: dict[str, deque[int]] = {}  # rows whose data could not be read, by queue
    for index, key in enumerate(keys):
        if index == root:
            continue
        if getattr(rows[index], "data_unreadable", False):
            unreadable.setdefault(rows[index].queue_name, deque()).append(index)
        else:
            free.setdefault(key, deque()).append(index)
    tree = Tree(root=root, placements={root: Placement(parent=None, position=0, name=root_name)})
    pending: deque[tuple[int, list[Any]]] = deque([(root, rows[root].children)])
    while pending:
        parent, definitions = pending.popleft()
        for definition in definitions:
            child = _take(free, definition, definition_keys)
            if child is None:
                child = _take_unreadable(unreadable, definition)
            if child is None:
                tree.missing.append((parent, definition))
                continue
            kids = tree.children.setdefault(parent, [])
            tree.placements[child] = Placement(parent=parent, position=len(kids), name=_name(definition))
            kids.append(child)
            nested = definition.get("children")
            pending.append((child, rows[child].children or (nested if isinstance(nested, list) else [])))
    tree.unplaced = [index for index in range(len(rows)) if index not in tree.placements]
    return tree


def _take(free: dict[tuple[str, Any], deque[int]], definition: Any, keys: _DefinitionKeys) -> int | None:
    if not isinstance(definition, dict):
        return None
    matches = free.get(keys.of(definition))
    return matches.popleft() if matches else None


def _take_unreadable(unreadable: dict[str, deque[int]], definition: Any) -> int | None:
    queue = definition.get("queueName") if isinstance(definition, dict) else None
    matches = unreadable.get(queue) if isinstance(queue, str) else None
    return matches.popleft() if matches else None


def _name(definition: dict[str, Any]) -> str | None:
    name = definition.get("name")
    return name if isinstance(name, str) and name.strip() else None

