"""The parts of ``scripts/learning_curve.py`` (its docstring says what it measures)."""
