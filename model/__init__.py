"""The joint audio-video model and inference."""
