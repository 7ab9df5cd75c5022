"""floodlora.data.sources package."""
