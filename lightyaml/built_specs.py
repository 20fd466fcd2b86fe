"""What each object a registry built was built from: `Registry.make` records it, so that an
error raised later inside one of the object's methods (a scheduler's step, a dataset's
__getitem__) names the config key of its spec (lightyaml/config/checking.py's `blame`). Lightning-free,
torch-free.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any, Optional

_BUILT: dict[int, tuple[Callable[[], Any], str, Mapping]] = {}


def remember_spec(obj: Any, kind: str, spec: Mapping) -> None:
    """Record that `obj` was built from `spec` (of a registry of this `kind`); forgotten with it."""
    key = id(obj)
    try:
        ref = weakref.ref(obj, lambda _: _BUILT.pop(key, None))
    except TypeError:   # not weak-referenceable (a plain function's result, say): not tracked
        return
    _BUILT[key] = (ref, kind, spec)


def spec_of(obj: Any) -> Optional[tuple[str, Mapping]]:
    """(registry kind, spec) that `obj` was built from, or None."""
    entry = _BUILT.get(id(obj))
    return (entry[1], entry[2]) if entry is not None and entry[0]() is obj else None


def copy_specs(memo: Mapping[int, Any]) -> None:
    """After `copy.deepcopy(x, memo)`: the copies of built objects were built from the same specs."""
    for key, (ref, kind, spec) in list(_BUILT.items()):
        if key in memo and ref() is not None:
            remember_spec(memo[key], kind, spec)


def built(kind: str, spec: Mapping, construct: Callable[[], Any]) -> Any:
    """`construct()`, remembering `spec` for the object it returns; an exception it raises carries
    the innermost spec being built (`error.spec`), the one to blame."""
    try:
        obj = construct()
    except Exception as e:
        e.spec = getattr(e, 'spec', None) or (kind, dict(spec))
        raise
    remember_spec(obj, kind, spec)
    return obj
