"""Sim-CLIP (Hossain & Imteaj, arXiv 2407.14971) as a plug-in: an adversarially robust vision tower by siamese
fine-tuning against a frozen copy of the starting tower, `smartclip-train-simclip`."""
