"""SyncAV Decode: SYNCAV_LATENT -> IMAGE frames + AUDIO + fps, ready for native CreateVideo -> SaveVideo."""

from __future__ import annotations

import torch

from .latent import check_av_latent, check_codecs


class SyncAVDecode:
    """Decodes an audio-video latent into frames, a waveform and the frame rate."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "codecs": ("SYNCAV_CODECS", {"tooltip": "The codecs from SyncAV Loader."}),
            "latent": ("SYNCAV_LATENT", {"tooltip": "The latent from a SyncAV sampler."}),
        }}

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    OUTPUT_TOOLTIPS = (
        "Every frame of every clip, clip after clip ([clips x frames, H, W, 3]).",
        "The soundtrack ([clips, channels, samples]), exactly as long as the frames last.",
        "Frames per second (wire it into Create Video's fps).",
    )
    FUNCTION = "decode"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Decodes a SyncAV latent into video frames (IMAGE), the soundtrack (AUDIO) and the frame rate; "
                   "Create Video (images, fps, audio) then Save Video writes an mp4. A batch of clips plays one "
                   "after another.")

    def decode(self, codecs, latent):
        codecs = check_codecs(codecs)
        latent = check_av_latent(latent)
        frames, waveform = codecs.decode(latent["video"], latent["audio"])     # [B, F, H, W, 3], [B, C, T]
        batch, num_frames = frames.shape[:2]
        fps, sample_rate = codecs.fps, codecs.sample_rate
        # The audio lasts exactly as long as the frames (CreateVideo also cuts it to frames / fps; a batch of
        # clips is concatenated there in the same order as the frames, so each clip's sound stays with it).
        samples = round(num_frames / fps * sample_rate)
        if waveform.shape[-1] >= samples:
            waveform = waveform[..., :samples]
        else:
            waveform = torch.nn.functional.pad(waveform, (0, samples - waveform.shape[-1]))
        images = frames.reshape(batch * num_frames, *frames.shape[2:]).float().cpu().contiguous()
        audio = {"waveform": waveform.float().cpu().contiguous(), "sample_rate": int(sample_rate)}
        return (images, audio, float(fps))
