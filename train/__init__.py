"""Training: the Trainer, the caption collator, the objectives and the cross-rank gather."""
