"""Readers, SAR preprocessing, synthetic scenes and the DataModule. Never imports floodlora.models."""
