"""MCIP (Schall et al., arXiv 2409.01936) as a plug-in: image-to-image retrieval fine-tuning that keeps the text
alignment (`--stage mcip`), its re-alignment of the text side (`realign`) and the single-label baseline (`gpr`),
`smartclip-train-mcip`."""
