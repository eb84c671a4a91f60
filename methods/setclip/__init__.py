"""Set-CLIP (Song et al., arXiv 2406.05766) as a plug-in: its objective, its paired/unpaired batches, `smartclip-train-setclip`."""
