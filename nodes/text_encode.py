"""SyncAV Text Encode: the prompts of both towers, and their negatives, as a SYNCAV_CONDITIONING.

Which text each tower reads (Ovi's one tagged prompt, or a video prompt and a sound description) is the library's
policy (``ovi.prompt.compose_prompts``), shared with the command line.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..ovi.prompt import compose_prompts
from ..text.comfy_clip import ComfyClipTextEncoder
from ..text.interface import EncodedText
from . import comfy_types


def _text(name: str, tooltip: str, optional: bool = False):
    return io.String.Input(name, multiline=True, default="", optional=optional, tooltip=tooltip)


class SyncAVTextEncode(io.ComfyNode):
    """Encodes the video prompt, the sound description and their negatives with the model's text encoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVTextEncode", display_name="SyncAV Text Encode", category=comfy_types.CATEGORY,
            description="Encodes a video prompt and a sound description (and a negative for each) for the SyncAV "
                        "sampler. An empty sound description reuses the video prompt. For Ovi models the prompt, "
                        "the spoken lines and the sound form Ovi's one prompt; a connected CLIP encodes instead of "
                        "the loader's text encoder.",
            inputs=[
                comfy_types.TEXT_ENCODER.Input("text_encoder", tooltip="The text encoder from SyncAV Loader."),
                _text("video_prompt", "What the video shows (required). The video tower reads it."),
                _text("audio_prompt", "What the soundtrack sounds like (the audio tower reads it). Empty: the video "
                                      "prompt is used for the audio too."),
                _text("video_negative", "What the video should not show (text guidance pushes away from it). Empty "
                                        "is usual."),
                _text("audio_negative", "What the sound should not be (text guidance pushes away from it). Empty is "
                                        "usual."),
                _text("speech", "Ovi models: what is said, one line per utterance; each line becomes <S>line<E> in "
                                "the prompt. Other models do not speak: leave it empty.", optional=True),
                _text("sound", "Ovi models: the sound description, added as <AUDCAP>...<ENDAUDCAP> (720 models) or "
                               "'Audio: ...' (960 models); empty: the audio prompt is used. For Ovi the video "
                               "prompt, speech and sound form one prompt both towers read, and empty negatives "
                               "become Ovi's defaults. Other models: used as the audio prompt when that is empty.",
                      optional=True),
                io.Clip.Input("clip", optional=True, tooltip=(
                    "Optional: encode with this CLIP instead of the loader's text encoder (Ovi: Load CLIP with "
                    "umt5_xxl_fp16 or its fp8 version, type wan). The Ovi presets do not need it: they load "
                    "models/text_encoders/umt5_xxl_fp16.safetensors at the first prompt, unless a CLIP is "
                    "connected here.")),
            ],
            outputs=[comfy_types.output(comfy_types.CONDITIONING, "conditioning",
                                         "Positive and negative prompts for the video and the audio tower.")])

    @classmethod
    def execute(cls, text_encoder, video_prompt: str, audio_prompt: str = "", video_negative: str = "",
                audio_negative: str = "", speech: str = "", sound: str = "", clip=None) -> io.NodeOutput:
        # An empty negative widget means "the model's default" (Ovi's negatives; nothing for other models).
        prompts = compose_prompts(video_prompt, audio_prompt, video_negative=video_negative.strip() or None,
                                  audio_negative=audio_negative.strip() or None, speech=speech, sound=sound,
                                  prompt_style=getattr(text_encoder, "prompt_style", None))
        encoder = text_encoder if clip is None else \
            ComfyClipTextEncoder(clip, text_encoder.dim, int(getattr(text_encoder, "max_length", 512)), label="clip")

        def one(text: str) -> EncodedText:
            return encoder.encode([text])

        texts = {"video_prompt": prompts.video_prompt, "audio_prompt": prompts.audio_prompt,
                 "video_negative": prompts.video_negative, "audio_negative": prompts.audio_negative,
                 "speech": speech, "sound": sound}
        conditioning = comfy_types.SyncAVConditioning(
            positive=(one(prompts.video_prompt), one(prompts.audio_prompt)),
            negative=(one(prompts.video_negative), one(prompts.audio_negative)), prompts=texts)
        return io.NodeOutput(conditioning)
