"""spikeformer."""
