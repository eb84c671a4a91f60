"""Evaluation: the `smartclip-eval` command, its evaluation sets and the metrics."""
