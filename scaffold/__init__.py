"""scaffold: declare a transformer language model in TOML, generate standalone Hugging Face code, test it.

The pipeline is ``manifest`` -> ``render`` (``scaffold new``) -> ``build`` (``scaffold build``) ->
``smoke`` (``scaffold test``). torch and transformers are imported only by the parts that need them,
so ``import scaffold`` and ``scaffold --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "default_dtype", "no_init_weights"]


def __getattr__(name: str):
    # construction helpers import torch: load them on first use only
    if name in ("no_init_weights", "default_dtype"):
        from scaffold.build import construct

        return getattr(construct, name)
    raise AttributeError(f"module 'scaffold' has no attribute {name!r}")
