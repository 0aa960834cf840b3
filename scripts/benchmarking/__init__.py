"""The measuring and rendering parts of ``scripts/benchmark.py`` (its docstring says what is measured)."""
