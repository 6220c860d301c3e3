"""SyncAV Loader: the joint model (as a ComfyUI MODEL), its codecs and its text encoder.

Which pipeline a choice loads is the library's (``ovi.checkpoint_choice``); this node tells it how ComfyUI finds
files, places weights and computes, and wraps the result for ComfyUI.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..ovi.checkpoint_choice import DTYPES, EMBEDDED_DEFAULT, EMBEDDED_SYNC_TUNED, LoadHost, load_checkpoint_choice
from ..ovi.variants import PRESET_LABELS
from ..runtime.compile import COMPILE_CHOICES, apply_compile_choice
from . import comfy_bridge, comfy_types


def _comfy_host() -> LoadHost:
    """ComfyUI's devices, layers (comfy.ops inside a server), model folders and dtype policy. The file lookups and
    the UMT5 loader are asked for when used (an Ovi text encoder loads at its first prompt)."""
    return LoadHost(device=comfy_bridge.offload_device(), codec_device=comfy_bridge.load_device(),
                    find_file=lambda folders, names: comfy_bridge.find_model_file(folders, names),
                    describe=lambda folders: comfy_bridge.model_folder_paths(folders),
                    resolve_listed=comfy_bridge.diffusion_model_path,
                    listed_folders=comfy_bridge.diffusion_model_folders, compute_dtype=comfy_bridge.compute_dtype,
                    operations=comfy_bridge.operations(),
                    umt5_clip_loader=_comfy_umt5_loader)


def _comfy_umt5_loader():
    """ComfyUI's own CLIP loader for UMT5-XXL inside a server; None outside (transformers loads it then)."""
    return comfy_bridge.load_umt5_xxl_clip if comfy_bridge.comfy_available() else None


class SyncAVLoader(io.ComfyNode):
    """Loads the joint audio-video model, the codecs it was trained with and its text encoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = [EMBEDDED_DEFAULT, EMBEDDED_SYNC_TUNED] + list(PRESET_LABELS) + comfy_bridge.diffusion_model_names()
        return io.Schema(
            node_id="SyncAVLoader", display_name="SyncAV Loader", category=comfy_types.CATEGORY,
            description="Loads a SyncAV joint audio-video model with its codecs and text encoder. The embedded "
                        "default needs no files; the Ovi presets load Ovi's joint model with the Wan2.2 VAE, the "
                        "MMAudio 16 kHz VAE and its BigVGAN vocoder, and UMT5-XXL at the first prompt.",
            inputs=[
                io.Combo.Input("checkpoint", options=choices, default=EMBEDDED_DEFAULT, tooltip=(
                    f"{EMBEDDED_DEFAULT!r}: the small model that ships with the package (no download, runs on a "
                    f"CPU). {EMBEDDED_SYNC_TUNED!r}: the same with its shipped sync LoRA (DPO on temporal "
                    "negatives) merged. 'Ovi ...': Ovi's published models; they need the joint model in "
                    "models/diffusion_models (Ovi's model.safetensors, model_960x960.safetensors, "
                    "model_960x960_10s.safetensors, model_fp8_e4m3fn.safetensors), wan2.2_vae.safetensors, "
                    "mmaudio_vae_16k_fp32.safetensors and mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors in "
                    "models/vae, and umt5_xxl_fp16.safetensors in models/text_encoders (loaded at the first "
                    "prompt, not at all when a CLIP is connected to SyncAV Text Encode). Otherwise a "
                    ".safetensors joint model from models/diffusion_models (Ovi files are recognised).")),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip=(
                    "Weight dtype in memory. auto: as stored in the file (fp32 for the embedded default; an fp8 "
                    "file stays fp8 and computes in bf16). Where the device cannot compute in it, ComfyUI "
                    "computes in a wider dtype.")),
                io.Combo.Input("compile", options=list(COMPILE_CHOICES), default="off", optional=True, tooltip=(
                    "regional: torch.compile (inductor) compiles the computation of one fusion block once and runs "
                    "every block through it, so compiling takes a fraction of compiling the whole model. The first "
                    "sampling step is slower while it compiles (again at a new size or batch, or when training); "
                    "later steps are faster. Needs Triton on a CUDA GPU (a C++ compiler on the CPU). ComfyUI's own "
                    "TorchCompileModel node compiles the whole model instead; use one or the other.")),
            ],
            outputs=[
                comfy_types.output(io.Model, "model", "The joint audio-video diffusion model (for SyncAV samplers "
                                                       "and trainers)."),
                comfy_types.output(comfy_types.CODECS, "codecs", "The video and audio codecs: latent sizes, "
                                                                   "SyncCFG anchors, decoding."),
                comfy_types.output(comfy_types.TEXT_ENCODER, "text_encoder", "The text encoder the model was "
                                                                               "trained with."),
            ])

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, compile: str = "off") -> io.NodeOutput:
        pipeline = load_checkpoint_choice(checkpoint, dtype, _comfy_host())
        apply_compile_choice(pipeline.model, compile)
        patcher = comfy_bridge.wrap_model(pipeline)
        return io.NodeOutput(patcher, comfy_types.SyncAVCodecs(pipeline), pipeline.text_encoder)
