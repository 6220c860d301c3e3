"""Generic audio-video sync metrics: audio onsets, visual motion events, event F1, AV-Align, cross-correlation
offset."""
