"""Training: data, temporal negatives, losses, the training loop, sync metrics."""
