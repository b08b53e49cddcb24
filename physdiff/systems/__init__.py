"""The systems registry: names become System classes here and nowhere else.

A system is found, in this order, as
- a built-in name (`heat`, `nbody`, `smoke`), imported only when asked for, so that a heat run
  never imports PhiFlow;
- an entry point in the group `physdiff.systems` of an installed package (its pyproject:
  `[project.entry-points."physdiff.systems"] burgers = "physdiff_burgers:BurgersSystem"`);
- a spec `package.module:Class` naming the class directly.
Datasets record the name or spec they were made with (`Metadata.simulator`), so train and infer
find the same class again.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from physdiff.data import Metadata
from physdiff.systems.base import InferenceResult, System

__all__ = ["BUILTIN", "DEFAULT", "InferenceResult", "System", "SystemLoadError", "available", "for_data",
           "get"]

BUILTIN = {
    "heat": "physdiff.systems.heat:HeatSystem",
    "nbody": "physdiff.systems.nbody:NBodySystem",
    "smoke": "physdiff.systems.smoke:SmokeSystem",
}
GROUP = "physdiff.systems"
DEFAULT = "heat"  # generate.py's system when none is named


class SystemLoadError(ValueError):
    """An unknown or broken system; the message names it."""


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def available() -> list[str]:
    """Built-in and installed (entry point) system names."""
    return sorted({**_plugins(), **BUILTIN})


def get(spec: str) -> type[System]:
    """The System class for a name or a `package.module:Class` spec; one clear error otherwise."""
    target = BUILTIN.get(spec) or _plugins().get(spec) or (spec if ":" in spec else None)
    if target is None:
        raise SystemLoadError(f"unknown system '{spec}' (known: {', '.join(available())}; or name "
                          "a class as package.module:Class)")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # noqa: BLE001 - any failure inside a plug-in is reported the same way
        raise SystemLoadError(f"system '{spec}' ({target}) cannot be loaded: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          ) from None
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise SystemLoadError(f"system '{spec}' ({target}) is not a physdiff.systems.System subclass")
    return cls


def for_data(meta: Metadata, state_shape: tuple[int, ...], spec: str | None = None) -> System:
    """The system of a dataset (or checkpoint): `spec` if given, else the one it records."""
    return get(spec or meta.simulator)(meta, tuple(state_shape))
