"""SyncAV Text Encode: per-modality prompts and negatives -> SYNCAV_CONDITIONING."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.text import EncodedText, TextEncoder


@dataclass
class SyncAVConditioning:
    """The SYNCAV_CONDITIONING value: (video, audio) encoded prompts, positive and negative, batch 1 each."""

    positive: tuple[EncodedText, EncodedText]
    negative: tuple[EncodedText, EncodedText]
    prompts: dict[str, str] = field(default_factory=dict)   # the texts, for display and debugging

    def __repr__(self) -> str:
        return f"SyncAVConditioning({self.prompts!r})"


class SyncAVTextEncode:
    """Encodes the video prompt, the sound description and their negatives with the model's text encoder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("SYNCAV_TEXT_ENCODER", {"tooltip": "The text encoder from SyncAV Loader."}),
            "video_prompt": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "What the video shows (required). The video tower reads it."}),
            "audio_prompt": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "What the soundtrack sounds like (the audio tower reads it). Empty: the video prompt "
                           "is used for the audio too."}),
            "video_negative": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "What the video should not show (text guidance pushes away from it). Empty is usual."}),
            "audio_negative": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "What the sound should not be (text guidance pushes away from it). Empty is usual."}),
        }}

    RETURN_TYPES = ("SYNCAV_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Positive and negative prompts for the video and the audio tower.",)
    FUNCTION = "encode"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Encodes a video prompt and a sound description (and a negative for each) for the SyncAV "
                   "sampler. An empty sound description reuses the video prompt.")

    def encode(self, text_encoder, video_prompt: str, audio_prompt: str = "", video_negative: str = "",
               audio_negative: str = ""):
        if not isinstance(text_encoder, TextEncoder):
            raise ValueError(f"text_encoder: expected the text encoder output of SyncAV Loader, received "
                             f"{type(text_encoder).__name__}")
        texts = {"video_prompt": video_prompt, "audio_prompt": audio_prompt, "video_negative": video_negative,
                 "audio_negative": audio_negative}
        for name, value in texts.items():
            if not isinstance(value, str):
                raise ValueError(f"{name}: expected a string, received {type(value).__name__}")
        if not video_prompt.strip():
            raise ValueError("video_prompt: expected a description of the video, received an empty prompt")
        if not audio_prompt.strip():
            audio_prompt = video_prompt
            texts["audio_prompt"] = video_prompt

        def one(text: str) -> EncodedText:
            return text_encoder.encode([text.strip()])

        conditioning = SyncAVConditioning(positive=(one(video_prompt), one(audio_prompt)),
                                          negative=(one(video_negative), one(audio_negative)), prompts=texts)
        return (conditioning,)
