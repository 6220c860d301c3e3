"""How a model runs, apart from what it is: LoRA files and merging, fp8 storage, block swap, MKL's reproducible mode."""
