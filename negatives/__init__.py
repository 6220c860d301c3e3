"""Temporal negatives: the distortion rules (each with its RuleSpec and requirement) and the coarse-to-subtle curriculum."""
