"""MED-TEX bundle components: data layer, networks, losses, engines, handlers and explainers.

Configs under ``configs/`` build these classes through ``_target_``; nothing here depends on the configs.
"""
