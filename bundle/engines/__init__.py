"""Ignite/MONAI engines and the metrics they report."""
