"""Tuning (`msrec tune`): an Optuna study over a model's config; Optuna is imported only when a study runs."""
