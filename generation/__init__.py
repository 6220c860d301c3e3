"""A model with its codecs and text encoder (AVPipeline) and one call that turns prompts into a clip."""
