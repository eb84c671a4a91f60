"""Interactive Gradio demo of a SmartCLIP model: zero-shot, retrieval and mask inspection."""
