"""Ovi's models: variants and their files, clip sizes, prompt format, the pipeline, which pipeline a checkpoint
choice loads, checkpoint conversion (codecs in codecs/)."""
