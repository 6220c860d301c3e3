"""Files every layer writes or reads: atomic fsynced writes, safetensors headers and tensors, video/audio media,
ComfyUI-style model folders."""
