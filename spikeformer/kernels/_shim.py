"""Old import paths that stay valid: a module whose attributes live in other modules.

``spikeformer.neurons._native`` and friends predate this package. Their names are now defined here, so such a
module reads each listed attribute from the module that owns it and writes it there: a test or a benchmark that
sets ``_native._lib`` or patches ``_native.forward_no_grad`` changes what the kernels actually use. The module's
own ``__dict__`` keeps a copy of each value as last read or written through it, for tools that look there
(``vars()``, pytest's ``monkeypatch``, which restores what it finds there).
"""

from __future__ import annotations

import sys
import types
from typing import Iterable, Mapping

_get = types.ModuleType.__getattribute__


class _ForwardingModule(types.ModuleType):
    def __getattribute__(self, name: str):
        d = _get(self, "__dict__")
        target = d["_forward_to"].get(name)
        if target is None:
            return _get(self, name)
        value = getattr(*target)
        d[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        target = _get(self, "__dict__")["_forward_to"].get(name)
        if target is not None:
            setattr(target[0], target[1], value)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        target = _get(self, "__dict__")["_forward_to"].get(name)
        if target is not None:
            delattr(target[0], target[1])
        super().__delattr__(name)


def forward_attributes(module_name: str, owners: Mapping[types.ModuleType, Iterable[str]],
                       renamed: Mapping[str, tuple[types.ModuleType, str]] = ()) -> None:
    """Make ``module_name`` read and write every name in ``owners[m]`` on module ``m`` (and ``renamed[old]`` =
    ``(m, new)`` as ``m.new``). The names must not also be defined in the module itself."""
    module = sys.modules[module_name]
    table = {name: (owner, name) for owner, names in owners.items() for name in names}
    table.update(dict(renamed))
    clash = sorted(set(table) & set(module.__dict__))
    if clash:
        raise RuntimeError(f"{module_name} defines {clash} itself and forwards them too")
    module.__dict__.update({name: getattr(*target) for name, target in table.items()})
    module.__dict__["_forward_to"] = table
    module.__class__ = _ForwardingModule
