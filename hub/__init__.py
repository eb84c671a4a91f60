"""Publishing SmartCLIP models: Hub push, model card, Space, text-encoder export for transformers and diffusers."""
