"""Data selection with a teacher CLIP (Wang et al., arXiv 2405.19547): negCLIPLoss and NormSim scores, `smartclip-select`."""
