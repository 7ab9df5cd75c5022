"""floodlora.inference package."""
