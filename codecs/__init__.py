"""Codecs between pixels/waveforms and latents: the interface, the embedded codecs, Wan2.2's VAE, MMAudio's VAE
with BigVGAN."""
