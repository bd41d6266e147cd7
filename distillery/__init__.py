"""The composition root: the CLI, presets, the local stack, calibration runs and the scenario.

Only this package (with ``bench/`` and ``tests/``) may import every stage package and the
bundled domains in ``demo/``; the stage packages import only downward (see the README's
architecture section).
"""

__all__: list[str] = []
"""Nothing at the top level: the entry points are the CLI (``distillery.cli``) and the
settings (``distillery.settings``)."""
