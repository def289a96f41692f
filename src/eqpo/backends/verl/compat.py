"""verl 0.9.1 next to TRL 1.16 in one environment (the ``[test]`` extra holds both backends).

verl's ``apply_monkey_patch`` (``verl/models/transformers/monkey_patch.py``, the ``if
is_trl_available():`` block) imports TRL's ``AutoModelForCausalLMWithValueHead`` whenever TRL can be
imported, to patch that class's ``state_dict``. TRL 1.16 has no value-head model any more (neither
``trl.experimental.ppo`` nor ``trl`` exports it), so the import raises and verl cannot build its FSDP
actor at all. The patch only matters for a TRL that has the class: :func:`apply` makes verl's check
ask exactly that ("is there a value-head model to patch?") instead of "is trl importable?".

Applied when ``eqpo.backends.verl`` is imported (every verl process of our runs, through
``VERL_USE_EXTERNAL_MODULES``) and, for any verl run in an environment where ``eqpo`` is installed,
through verl's ``verl.plugins`` entry point (``pyproject.toml`` names the package), so a user who installs both backends
never meets the broken import. Nothing changes where TRL still has the class or is absent.
"""

from __future__ import annotations

import importlib
import importlib.util

VALUE_HEAD = "AutoModelForCausalLMWithValueHead"
# Where verl 0.9.1 looks for it, in its order.
VALUE_HEAD_MODULES = ("trl.experimental.ppo", "trl")
PATCHED_MODULE = "verl.models.transformers.monkey_patch"


def trl_has_value_head() -> bool:
    """True when TRL is installed and exports the value-head model verl's monkey patch imports."""
    if importlib.util.find_spec("trl") is None:
        return False
    for name in VALUE_HEAD_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, VALUE_HEAD):
            return True
    return False


def apply() -> bool:
    """Point verl's TRL check in its monkey-patch module at :func:`trl_has_value_head`; returns True
    when the module was patched. Raises an ImportError naming the module if verl moved it (this is
    pinned to verl 0.9.1)."""
    try:
        module = importlib.import_module(PATCHED_MODULE)
    except ImportError as err:
        if importlib.util.find_spec("verl") is None:
            return False
        raise ImportError(f"eqpo.backends.verl.compat expects verl 0.9.1's {PATCHED_MODULE} ({err})") from err
    if not hasattr(module, "is_trl_available"):
        raise ImportError(
            f"verl's {PATCHED_MODULE} has no is_trl_available any more: eqpo.backends.verl.compat is "
            "written for verl 0.9.1 (pip install 'verl==0.9.1')"
        )
    module.is_trl_available = trl_has_value_head
    return True
