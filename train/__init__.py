"""Training: flow-matching and DPO losses, the resumable loop, the DPO/SFT LoRA trainer, the embedded model's training."""
