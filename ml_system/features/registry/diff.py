"""Field-level differences between registered definitions and a definitions module.

``mlsys features plan`` shows these before ``apply`` writes them, so a
reviewer sees "ttl_seconds: 3600 -> 7200" (or "schema order: [...] -> [...]")
rather than two JSON blobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("entities", "feature_views", "on_demand_feature_views", "feature_services")
# registry-managed keys, never part of what a definitions module says
_MANAGED = {"lifecycle", "history"}


@dataclass(frozen=True)
class Change:
    kind: str  # "entity" | "feature_view" | "feature_service"
    name: str
    action: str  # "add" | "change" | "remove"
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        sign = {"add": "+", "change": "~", "remove": "-"}[self.action]
        head = f"{sign} {self.kind} {self.name}"
        return head if not self.fields else head + ": " + "; ".join(self.fields)


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """Drop managed keys and key the schema by field name, so a diff names the field."""
    out = {k: v for k, v in data.items() if k not in _MANAGED}
    for key in ("schema", "inputs"):
        if key in out:
            out[key] = {f["name"]: f["dtype"] for f in out[key]}
    return out


def _order_diff(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> list[str]:
    """A change of field order (the schema is compared by name above, which cannot see it).

    Order is part of a view's contract: online rows are laid out in it, and training
    frames list features in it, so ``plan`` shows a reorder as a change of its own.
    """
    if not old or not new:
        return []
    before, after = [f["name"] for f in old], [f["name"] for f in new]
    kept_before = [n for n in before if n in after]
    kept_after = [n for n in after if n in before]
    return [f"schema order: {before} -> {after}"] if kept_before != kept_after else []


def field_diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                lines.append(f"{sub} added ({new[key]!r})")
            elif key not in new:
                lines.append(f"{sub} removed (was {old[key]!r})")
            else:
                lines.extend(field_diff(old[key], new[key], sub))
        return lines
    if old != new:
        return [f"{path}: {old!r} -> {new!r}"]
    return []


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """What turns registry document ``old`` into ``new``, object by object."""
    changes: list[Change] = []
    for kind in KINDS:
        label = kind.rstrip("s") if kind != "entities" else "entity"
        before, after = old.get(kind, {}), new.get(kind, {})
        for name in sorted(set(before) | set(after)):
            if name not in before:
                changes.append(Change(label, name, "add"))
            elif name not in after:
                changes.append(Change(label, name, "remove"))
            else:
                lines = field_diff(_comparable(before[name]), _comparable(after[name]))
                lines.extend(_order_diff(before[name].get("schema"), after[name].get("schema")))
                if before[name].get("lifecycle") != after[name].get("lifecycle"):
                    lines.append(f"lifecycle: {before[name].get('lifecycle')} -> {after[name].get('lifecycle')}")
                if lines:
                    changes.append(Change(label, name, "change", lines))
    return changes
