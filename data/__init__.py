"""Training data: clip folders (decoding, captions, latent cache) and scored preference pairs."""
