"""Related methods as plug-ins of the trainer: each folder is one method (objective, data step, its own command)."""
