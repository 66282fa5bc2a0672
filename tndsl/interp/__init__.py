"""Interpretability on compiled models: hook points, caches, circuits, path expansions,
attribution, and the studies built on them (the induction-head study).

May import: the front end (tndsl.lang), tndsl.program, passes, codegen, verify, models.
Nothing but the CLI imports it."""
