"""Registers LOLViT with ultralytics in any process that imports ultralytics (the ``yolo`` CLI included).

Loaded at interpreter start-up by ``lolvit-ultralytics.pth`` (installed next to this module) and by
``import lolvit``. It imports nothing heavy: it puts a finder on ``sys.meta_path`` that, once
``ultralytics.nn.tasks`` or ``ultralytics.engine.model`` has finished executing, calls
``lolvit.integrations.ultralytics.register()`` (``LOLViTBackbone`` resolvable in model YAMLs, the
shipped YAMLs by bare name, lolvit classes on the safe-loading allow-list). A failure there is a
warning, never an error in the user's ultralytics program.
"""
import importlib.abc
import sys
import warnings

TARGETS = ("ultralytics.nn.tasks", "ultralytics.engine.model")


def _register() -> None:
    try:
        from lolvit.integrations import ultralytics as lu

        lu.register()
    except Exception as e:  # the user's ultralytics program must run even if lolvit is broken
        warnings.warn(f"lolvit could not register with ultralytics: {type(e).__name__}: {e}", stacklevel=2)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register()

    def __getattr__(self, name):  # get_code, get_source, is_package, ... of the real loader
        return getattr(self.loader, name)


class Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of :data:`TARGETS` so that registration follows their execution."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Idempotent. Registers now for the modules already imported, later for the others."""
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder())
    if any(name in sys.modules for name in TARGETS):
        _register()


install()
