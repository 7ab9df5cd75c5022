"""floodlora.training package."""
