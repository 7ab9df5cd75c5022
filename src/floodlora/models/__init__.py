"""Clay-compatible encoder, flood decoder, segmentor and adaptation strategies. Never imports data."""
