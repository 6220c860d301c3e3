"""Ovi's models: variants and their files, clip sizes, prompt format, the pipeline, checkpoint conversion (codecs in codecs/)."""
