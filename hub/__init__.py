"""Publishing SmartCLIP models: Hub push, model card, text-encoder export for transformers and diffusers."""
