"""Data: dataset loading and checking, image reading, the built-in scenes, the offline word tokenizer."""
