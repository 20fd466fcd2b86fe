"""`lightning`, `lightning.pytorch` and `lightning.fabric`: Lightning's unified package names, for
the one Lightning lightyaml runs (`pytorch_lightning` and `lightning_fabric`).

The `lightning` package is the same code as `pytorch_lightning` under other module names; where
both are loaded a process holds two Lightnings, and the Trainer of one refuses the modules,
callbacks and loggers of the other. Most code from elsewhere imports `lightning` (`import
lightning as L`, `from lightning.pytorch.callbacks import ...`), so the user's files may: once
`install` ran (lightyaml/registry.py does, before it imports any user file), `lightning.pytorch.X`
is the module `pytorch_lightning.X` itself (the same classes, the same `isinstance`), and
`lightning.fabric.X` is `lightning_fabric.X`. The `lightning` package need not be installed; where
it is, lightyaml's processes use these names in its place. Nothing is imported until a name is
used. Lightning-free and torch-free at import.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, Optional

PACKAGES = {'lightning.pytorch': 'pytorch_lightning', 'lightning.fabric': 'lightning_fabric'}
# What `import lightning as L` gives at its top level: where each name lives.
TOP_LEVEL = {'Trainer': 'pytorch_lightning', 'LightningModule': 'pytorch_lightning',
             'LightningDataModule': 'pytorch_lightning', 'Callback': 'pytorch_lightning',
             'seed_everything': 'pytorch_lightning', 'Fabric': 'lightning_fabric', '__version__': 'pytorch_lightning',
             'pytorch': 'lightning.pytorch', 'fabric': 'lightning.fabric'}


def _target(fullname: str) -> Optional[str]:
    """The module `fullname` (under `lightning.`) is another name of, or None for other names."""
    for alias, real in PACKAGES.items():
        if fullname == alias or fullname.startswith(alias + '.'):
            return real + fullname[len(alias):]
    return None


def _top_level(name: str) -> Any:
    """`lightning.<name>`, imported when first asked (PEP 562's module `__getattr__`)."""
    if name not in TOP_LEVEL:
        raise AttributeError(f"module 'lightning' has no attribute {name!r}")
    module = importlib.import_module(TOP_LEVEL[name])
    return module if name in ('pytorch', 'fabric') else getattr(module, name)


class LightningNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `lightning` and the modules below it: `lightning` itself is a small package of the
    names above; any other is the module of `pytorch_lightning` or `lightning_fabric` it names."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}   # the real modules' own specs, which the import system overwrites

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != 'lightning' and _target(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        real = _target(spec.name)
        if real is None:
            return None   # `lightning`: a new, empty module
        module = importlib.import_module(real)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        real = _target(module.__spec__.name)
        if real is None:   # `lightning`: its names, imported when used
            module.__path__ = []
            module.__getattr__ = _top_level
            module.__all__ = [name for name in TOP_LEVEL if name not in ('pytorch', 'fabric', '__version__')]
        else:   # the real module: its own spec back (the import system set this one's)
            module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    """Put the finder first on the import path, once, unless `lightning` was imported already (then
    that package stays as it was imported)."""
    if 'lightning' not in sys.modules and not any(isinstance(f, LightningNames) for f in sys.meta_path):
        sys.meta_path.insert(0, LightningNames())
