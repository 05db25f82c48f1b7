"""User modules named in a config's `imports:` (or `mimreg pretrain --import`): imported before
method and regularizer names are resolved, so that their `@register` calls take effect.

Importing a module runs its code, so the modules a stored config names (a checkpoint shared with
you) are imported only with the user's consent: `refuse_unconsented` lets a stored config through
only when every module it names is already imported (by --import, --trust-imports, the user's own
config, or their Python code)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from mimreg.errors import ConfigError


def is_file_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name or os.sep in name


def absolute_import_paths(names: list[str]) -> list[str]:
    """File paths made absolute (relative to the current folder), so that a run's config.yaml
    imports the same file from wherever it is resumed or evaluated; module names unchanged."""
    return [str(Path(n).expanduser().resolve()) if is_file_path(n) else n for n in names]


def import_user_modules(names: list[str]) -> None:
    """Import each module name (the current folder is searched too, as `python -m` does) or file."""
    for name in names:
        try:
            _import_file(Path(name).expanduser()) if is_file_path(name) else _import_module(name)
        except ConfigError:
            raise
        except Exception as err:  # the user's module failed: say which one and why
            raise ConfigError(f"imports: importing {name!r} failed with {type(err).__name__}: {err}; "
                              "fix the module, or check the name (a module on PYTHONPATH or in the "
                              "current folder, or a path to a .py file)") from err


def _import_module(name: str) -> None:
    if name in sys.modules:
        return
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:  # the `mimreg` console script does not search the current folder; `python -m` does
        sys.path.insert(0, here)
    try:
        importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(here)


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"imports: {path} is not a file; give a module name or the path of a .py file")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


CONSENT = ("pass --import MODULE for each module you trust, or --trust-imports to import every module it names "
           "(in Python: import them before loading)")


def is_imported(name: str) -> bool:
    """True when importing `name` (a module name or .py file) would run no code: it is loaded already."""
    if not is_file_path(name):
        return name in sys.modules
    path = Path(name).expanduser()
    loaded = sys.modules.get(path.stem)
    return loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve()


def refuse_unconsented(names: list, source: str, consent: str = CONSENT) -> None:
    """A ConfigError naming the modules of `names` (a stored config's `imports:`) not yet imported."""
    if not isinstance(names, list):
        raise ConfigError(f"{source}: imports must be a list of module names, got {type(names).__name__}")
    missing = [str(n) for n in names if not is_imported(str(n))]
    if missing:
        raise ConfigError(f"{source} asks to import {missing} (importing runs their code), which mimreg does "
                          f"not do without your consent; {consent}")
