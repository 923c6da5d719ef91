"""The feature registry: versioned definitions, lifecycle, consumers, plan diffs."""

from ml_system.features.registry.diff import Change
from ml_system.features.registry.registry import Consumer, Definition, Guard, LifecycleEvent, Registry

__all__ = ["Change", "Consumer", "Definition", "Guard", "LifecycleEvent", "Registry"]
