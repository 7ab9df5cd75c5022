"""floodlora.analysis package."""
