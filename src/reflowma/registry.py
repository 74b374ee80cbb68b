"""Named registries (networks, datasets, objectives, metrics) and plugin loading.

A registry maps a config name (``net.name``, ``data.name``, ...) to a factory. Code outside the
package extends the harness without editing it: a module that calls ``REGISTRY.register(...)``
is imported when its name is listed in ``$REFLOWMA_PLUGINS`` (comma-separated module names) or
exposed under the ``reflowma.plugins`` entry-point group of an installed distribution. Plugins
are loaded once, the first time any registry is read.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator

PLUGIN_ENV = "REFLOWMA_PLUGINS"
ENTRY_POINT_GROUP = "reflowma.plugins"
_loaded: set[str] = set()
_scanned: list[bool] = [False]  # entry points read (once per process: a scan costs ms)


class InputError(ValueError):
    """Bad user input found by a check (params, input files and how they fit together).

    The command line reports it as one line with exit code 2; any other exception is a bug and
    keeps its traceback. It lives in the bottom layer so that every layer can raise it;
    ``reflowma.infra.config`` re-exports it next to ``ConfigError`` (a subclass).
    """


class UnknownName(InputError):
    """A name that no registry entry carries; ``str(err)`` names the field and the choices."""

    def __init__(self, field: str, name, allowed):
        self.field = field
        super().__init__(f"{field}: unknown {name!r}; allowed: {', '.join(allowed)}")


def plugin_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]


def load_plugins() -> None:
    """Import every plugin module not imported yet: those of the environment (read on every
    call, so a module listed later is still loaded), then the entry points of the installed
    distributions (scanned on the first call only: ``importlib.metadata`` reads every
    distribution's metadata, milliseconds that every registry lookup in a training step
    would pay otherwise)."""
    for name in plugin_modules():
        if name not in _loaded:
            _loaded.add(name)
            importlib.import_module(name)
    if _scanned[0]:
        return
    _scanned[0] = True
    # importlib.metadata (tens of ms): on the first lookup (the first config checked), not on
    # import of this module (`reflowma --help` imports it)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"ep:{ep.value}"
        if key not in _loaded:
            _loaded.add(key)
            ep.load()


class Registry:
    """``name -> object``; ``field`` is the config key the name comes from (for errors)."""

    def __init__(self, field: str):
        self.field = field
        self._items: dict[str, object] = {}

    def register(self, name: str, obj=None, *, replace: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` it is a decorator."""

        def add(o):
            if name in self._items and not replace and self._items[name] is not o:
                raise ValueError(f"{self.field}: {name!r} is registered already")
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a plug-in clean up with this)."""
        self._items.pop(name, None)

    def get(self, name: str):
        """The object registered under ``name``; a ``"module:attr"`` string is imported on this
        first lookup (built-ins register that way, so reading the names never imports torch)."""
        load_plugins()
        try:
            obj = self._items[name]
        except KeyError:
            raise UnknownName(self.field, name, self.names()) from None
        if isinstance(obj, str) and ":" in obj:
            module, _, attr = obj.partition(":")
            obj = self._items[name] = getattr(importlib.import_module(module), attr)
        return obj

    def names(self) -> tuple[str, ...]:
        load_plugins()
        return tuple(self._items)

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, object]]:
        load_plugins()
        return list(self._items.items())


Factory = Callable[..., object]
