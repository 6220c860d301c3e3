"""SyncAV Text Encode: per-modality prompts and negatives -> SYNCAV_CONDITIONING.

For an Ovi model (its text encoder carries a ``prompt_style``) the video prompt, the spoken lines and the sound
description are joined into Ovi's one prompt (ovi/prompt.py), which both towers read, and empty negatives
become Ovi's defaults. An optional CLIP input (e.g. ComfyUI's Load CLIP with the Wan UMT5-XXL file) encodes instead
of the loader's text encoder, the way the Ovi presets' own encoder encodes inside ComfyUI (nodes/clip_text_encoder.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ovi.prompt import OVI_AUDIO_NEGATIVE, OVI_VIDEO_NEGATIVE, build_ovi_prompt, speech_lines
from ..text.interface import EncodedText, TextEncoder
from .clip_text_encoder import ComfyClipTextEncoder


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
        }, "optional": {
            "speech": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "Ovi models: what is said, one line per utterance; each line becomes <S>line<E> in the "
                           "prompt. Other models do not speak: leave it empty."}),
            "sound": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "Ovi models: the sound description, added as <AUDCAP>...<ENDAUDCAP> (720 models) or "
                           "'Audio: ...' (960 models); empty: the audio prompt is used. For Ovi the video prompt, "
                           "speech and sound form one prompt both towers read, and empty negatives become Ovi's "
                           "defaults. Other models: used as the audio prompt when that is empty."}),
            "clip": ("CLIP", {
                "tooltip": "Optional: encode with this CLIP instead of the loader's text encoder (Ovi: Load CLIP "
                           "with umt5_xxl_fp16 or its fp8 version, type wan). The Ovi presets do not need it: they "
                           "load models/text_encoders/umt5_xxl_fp16.safetensors at the first prompt, unless a CLIP "
                           "is connected here."}),
        }}

    RETURN_TYPES = ("SYNCAV_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Positive and negative prompts for the video and the audio tower.",)
    FUNCTION = "encode"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Encodes a video prompt and a sound description (and a negative for each) for the SyncAV "
                   "sampler. An empty sound description reuses the video prompt. For Ovi models the prompt, the "
                   "spoken lines and the sound form Ovi's one prompt; a connected CLIP encodes instead of the "
                   "loader's text encoder.")

    def encode(self, text_encoder, video_prompt: str, audio_prompt: str = "", video_negative: str = "",
               audio_negative: str = "", speech: str = "", sound: str = "", clip=None):
        if not isinstance(text_encoder, TextEncoder):
            raise ValueError(f"text_encoder: expected the text encoder output of SyncAV Loader, received "
                             f"{type(text_encoder).__name__}")
        texts = {"video_prompt": video_prompt, "audio_prompt": audio_prompt, "video_negative": video_negative,
                 "audio_negative": audio_negative, "speech": speech, "sound": sound}
        for name, value in texts.items():
            if not isinstance(value, str):
                raise ValueError(f"{name}: expected a string, received {type(value).__name__}")
        if not video_prompt.strip():
            raise ValueError("video_prompt: expected a description of the video, received an empty prompt")
        style = getattr(text_encoder, "prompt_style", None)
        if style is not None:
            # Ovi: one prompt for both towers; the sound description defaults to the audio prompt.
            prompt = build_ovi_prompt(video_prompt, speech, sound.strip() or audio_prompt.strip(), style)
            texts.update(video_prompt=prompt, audio_prompt=prompt,
                         video_negative=video_negative.strip() or OVI_VIDEO_NEGATIVE,
                         audio_negative=audio_negative.strip() or OVI_AUDIO_NEGATIVE)
        else:
            if speech_lines(speech):
                raise ValueError("speech: this model does not speak (spoken lines are an Ovi prompt feature); "
                                 "leave speech empty or load an Ovi model")
            if not audio_prompt.strip():
                texts["audio_prompt"] = sound if sound.strip() else video_prompt
        encoder = text_encoder if clip is None else \
            ComfyClipTextEncoder(clip, text_encoder.dim, int(getattr(text_encoder, "max_length", 512)), label="clip")

        def one(text: str) -> EncodedText:
            return encoder.encode([text.strip()])

        conditioning = SyncAVConditioning(
            positive=(one(texts["video_prompt"]), one(texts["audio_prompt"])),
            negative=(one(texts["video_negative"]), one(texts["audio_negative"])), prompts=texts)
        return (conditioning,)
