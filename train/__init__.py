"""Fine-tuning, data and evaluation for SmartCLIP on the HF Trainer."""
