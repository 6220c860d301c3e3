"""Temporal negatives: the distortion rules (one RuleSpec each, in rules.RULES), their magnitudes, the coarse-to-subtle
curriculum, and the preview of a negative."""
