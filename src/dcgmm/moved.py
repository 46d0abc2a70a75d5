"""Where the modules of the earlier flat layout live now, so that what was written under their old
names still loads: checkpoints pickle the classes they hold by module path (e.g. a
``functools.partial`` of ``dcgmm.annealing.Annealing``), and scripts may import the old paths.

:func:`install` (run by ``import dcgmm``) puts a finder on ``sys.meta_path`` that answers an import
of an old name with the module under its new name: the same module object, so classes compare equal
and nothing is loaded twice.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["MOVED", "install"]

# old module path -> the module that holds it now
MOVED = {
    "dcgmm.layers": "dcgmm.core.layers", "dcgmm.model": "dcgmm.core.model", "dcgmm.typecheck": "dcgmm.core.typecheck",
    "dcgmm.sampling": "dcgmm.core.sampling", "dcgmm.scoring": "dcgmm.core.scoring", "dcgmm.metrics": "dcgmm.core.metrics",
    "dcgmm.images": "dcgmm.core.images",
    "dcgmm.policy": "dcgmm.training.policy", "dcgmm.annealing": "dcgmm.training.annealing", "dcgmm.graphstep": "dcgmm.training.graphstep",
    "dcgmm.runtime": "dcgmm.training.runtime",
    "dcgmm.module": "dcgmm.app.module", "dcgmm.tasks": "dcgmm.app.tasks", "dcgmm.evaluation": "dcgmm.app.evaluation",
    "dcgmm.config": "dcgmm.app.config", "dcgmm.resolvers": "dcgmm.app.resolvers", "dcgmm.utils": "dcgmm.app.utils",
    "dcgmm.checkpoints": "dcgmm.app.checkpoints", "dcgmm.loggers": "dcgmm.app.loggers", "dcgmm.strategy": "dcgmm.app.strategy",
    "dcgmm.ndb": "dcgmm.app.ndb", "dcgmm.api": "dcgmm.app.api", "dcgmm.callbacks": "dcgmm.app.callbacks",
    "dcgmm.verdict": "dcgmm.results.verdict", "dcgmm.baselines": "dcgmm.results.baselines", "dcgmm.peers": "dcgmm.results.peers",
}


def new_name(name: str) -> str | None:
    """The current name of module ``name`` if it (or a package above it) moved, else ``None``."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if new_name(fullname) else None

    def create_module(self, spec):
        return importlib.import_module(new_name(spec.name))

    def exec_module(self, module) -> None:  # the module under its new name is already executed
        pass


def install() -> None:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # first: the path finder would load a submodule of an old package name a second time
