"""The experiment driver: `smartclip-compare` and its plots."""
