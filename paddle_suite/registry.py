"""Name -> builder registries, so configs select tasks, architectures and datasets by name.

Capabilities register themselves when their package is imported; ``load_capabilities`` imports
them all. Import rule: a capability (``kge``, ``ads``, ``vision``, ``backdoor``, ``hessian``, ``oie``)
imports the core (``config``, ``registry``, ``task``, ``engine``, ``data``, ``io``) and the shared
kits (``classification``: image datasets, augmentation, classification losses and metrics), never
another capability. Models of another capability are reached by name through ``ARCHS``.
"""
import difflib
import importlib
import threading

# Capability packages whose import registers their tasks/archs/datasets.
CAPABILITIES = (
    "paddle_suite.kge",
    "paddle_suite.ads",
    "paddle_suite.classification",
    "paddle_suite.vision",
    "paddle_suite.backdoor",
    "paddle_suite.hessian",
    "paddle_suite.oie",
)


class Registry:
    """A named mapping of builders with helpful errors for unknown names."""

    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name=None):
        """Decorator: ``@ARCHS.register()`` registers under the object's ``__name__``."""

        def wrap(obj):
            key = name or obj.__name__
            if key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return wrap

    def get(self, name):
        if name not in self._items:
            load_capabilities()
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise KeyError(
                f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._items)) or '(none)'}"
            )
        return self._items[name]

    def names(self):
        load_capabilities()
        return sorted(self._items)

    def __contains__(self, name):
        load_capabilities()
        return name in self._items


TASKS = Registry("task")
ARCHS = Registry("architecture")
LOSSES = Registry("loss")
METRICS = Registry("metric")

_loaded = False
_loading = False
# Held while the capabilities import: another thread asking a registry waits for every name instead of
# finding a half-filled one (seen with bench/oie_results.py's worker threads). Re-entrant, because a
# capability's import may itself look a name up.
_load_lock = threading.RLock()


def load_capabilities():
    """Import every capability package that is present (each registers itself on import)."""
    global _loaded, _loading
    if _loaded:
        return
    with _load_lock:
        if _loaded or _loading:  # _loading: called again from inside a capability's import
            return
        _loading = True
        try:
            for module in CAPABILITIES:
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as err:
                    if err.name != module:  # a real missing dependency inside the capability
                        raise
            _loaded = True
        finally:
            _loading = False
