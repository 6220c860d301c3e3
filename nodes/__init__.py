"""ComfyUI nodes: thin translators between ComfyUI's types and the model/ and train/ library."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
