"""The model families of the stack, one folder each; FOLDERS is the only place outside them that names them.

A family folder holds everything its family adds, under these names:

- `__init__.py`: `DECLARATION` (registry.spec.Declaration), its registry entries: model families and their
  components, checkpoints, LoRAs, routes, app groups. Pure data, read by every stage (api/ included).
- `tiny.py`: `BUILDERS`, tiny random-weight checkpoints (and LoRAs) in the real layout, by `Checkpoint.tiny` /
  `Lora.tiny`.
- `adapters.py`: `ADAPTERS` (`Component.exporter` -> components.adapters.Adapter) for the modules components/ has
  no shared adapter for, and `PARITY_SHAPES` (family -> the two shapes its exports are checked at).
- `proxies.py`, optional: `PROXIES` (exporter -> proxy class) where a pipeline touches more of a module than
  model_repository's ComponentProxy offers.
- `pipeline.py`, optional: `CALL_HOOKS` (pipeline class -> a function adapting the call's keyword arguments) and
  `PIPELINES` (pipeline class -> a builder) for pipelines diffusers does not have.
- `reference.py`: `REFERENCES` (route -> the plain diffusers call the contract tests compare served output with).
- `tests/`: the checks special to the family; the shared ones (tests/contract/) it gets by being declared.

The shared stages find a family's code through `code(family, module)`; they name no family.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.spec import Declaration

FOLDERS = ("flux", "qwen_image", "z_image", "wan")


def declarations() -> dict[str, Declaration]:
    """folder -> its registry entries."""
    return {folder: importlib.import_module(f"{__name__}.{folder}").DECLARATION for folder in FOLDERS}


def code(family: str, module: str) -> ModuleType | None:
    """The module `module` of the folder that declares model family `family`; None when the folder has none."""
    from registry import FOLDER_OF

    name = f"{__name__}.{FOLDER_OF[family]}.{module}"
    return importlib.import_module(name) if importlib.util.find_spec(name) is not None else None


def hooks(family: str, module: str, attribute: str) -> dict[str, Any]:
    """A mapping a family folder's module declares (e.g. adapters.ADAPTERS); {} where it declares none."""
    found = code(family, module)
    return dict(getattr(found, attribute, {})) if found is not None else {}
