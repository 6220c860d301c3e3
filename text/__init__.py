"""Text encoders: the interface the model reads (EncodedText), the embedded encoder and UMT5 from local files."""
