"""Ovi's audio codec (MMAudio 16 kHz mel VAE + BigVGAN): key compatibility with the published checkpoints, the
weight-norm layouts, the mel features, the codec's rates and anchors, clear errors for the wrong files, and the
``convert`` command. Full-size models are only built on the meta device; everything that runs is tiny."""

import json

import pytest
import torch

from comfyui_syncav.cli import main
from comfyui_syncav.codecs.bigvgan import (BIGVGAN_16K_CONFIG, BigVGANConfig, BigVGANGenerator,
                                          bigvgan_state_dict_for_loading, fold_weight_norm, infer_bigvgan_config,
                                          load_bigvgan, unfold_weight_norm)
from comfyui_syncav.codecs.mmaudio import (MMAUDIO_LATENT_CHANNELS, MMAUDIO_SAMPLE_RATE_HZ, MMAudioCodec)
from comfyui_syncav.codecs.mel import MMAUDIO_16K_MEL, LogMelSpectrogram, slaney_mel_filterbank
from comfyui_syncav.codecs.mmaudio_vae import (MMAUDIO_VAE_16K_CONFIG, MMAudioVAE, MMAudioVAEConfig,
                                              infer_mmaudio_vae_config, load_mmaudio_vae)
from comfyui_syncav.files.safetensors_io import CheckpointError, load_tensors, save_tensors_atomic

TINY_VAE = MMAudioVAEConfig(hidden_dim=8)
TINY_VOCODER = BigVGANConfig(upsample_initial_channel=64)      # stages of 32, 16, 8, 4, 2, 1 channels


def _manifest(reference_dir, name):
    return json.loads((reference_dir / name).read_text())


def _shapes(state):
    return {k: list(v.shape) for k, v in state.items()}


def _manifest_shapes(entries):
    return {k: shape for k, (shape, _dtype) in entries.items()}


def _tiny_vae_raw_state(config=TINY_VAE, seed=1):
    """A VAE state dict as the checkpoint stores it: raw (un-normalised) conv weights, real-looking statistics.
    Drawn key by key in sorted order, so the reference implementation can be given the very same weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = _shapes(MMAudioVAE(config).state_dict())
    state = {}
    for key in sorted(shapes):
        noise = torch.randn(shapes[key], generator=generator)
        if key == "data_mean":
            state[key] = noise - 2.0
        elif key == "data_std":
            state[key] = 1.0 + 0.1 * noise.abs()
        elif key.endswith("learnable_gain"):
            state[key] = 0.2 * noise
        else:
            state[key] = noise
    return state


def _tiny_vocoder_state(seed=2):
    """A folded BigVGAN state dict with weights small enough that the output is not saturated by the tanh."""
    generator = torch.Generator().manual_seed(seed)
    buffers = BigVGANGenerator(TINY_VOCODER).state_dict()
    state = {}
    for key in sorted(buffers):
        tensor = buffers[key]
        if key.endswith(".filter"):
            state[key] = tensor.clone()
        elif key.endswith((".alpha", ".beta")):
            state[key] = 0.3 * torch.randn(tensor.shape, generator=generator)
        elif key.endswith(".weight"):
            direction = torch.randn(tensor.shape, generator=generator)
            gain = 0.1 + 0.3 * torch.rand(tensor.shape[0], *[1] * (tensor.ndim - 1), generator=generator)
            state[key] = gain * direction / direction.flatten(1).norm(dim=1).view_as(gain)
        else:
            state[key] = 0.05 * torch.randn(tensor.shape, generator=generator)
    return state


def _tiny_codec_files(tmp_path):
    vae_file, vocoder_file = tmp_path / "vae.safetensors", tmp_path / "vocoder.safetensors"
    save_tensors_atomic(_tiny_vae_raw_state(), vae_file)
    save_tensors_atomic({"generator." + k: v for k, v in unfold_weight_norm(_tiny_vocoder_state()).items()},
                        vocoder_file)
    return vae_file, vocoder_file


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory, one_thread):
    return MMAudioCodec.from_files(*_tiny_codec_files(tmp_path_factory.mktemp("codec")))


# ------------------------------------------------------------------------------------------- key manifests

def test_full_size_vae_has_exactly_the_published_keys_and_shapes(reference_dir):
    manifest = _manifest(reference_dir, "mmaudio_vae16k_keys.json")
    with torch.device("meta"):
        vae = MMAudioVAE(MMAUDIO_VAE_16K_CONFIG)
    assert len(vae.state_dict()) == 57 == manifest["_meta"]["num_keys"]
    assert _shapes(vae.state_dict()) == _manifest_shapes(manifest["keys"])
    assert sum(p.numel() for p in vae.parameters()) == manifest["_meta"]["total_params"]
    assert infer_mmaudio_vae_config(_manifest_shapes(manifest["keys"])) == MMAUDIO_VAE_16K_CONFIG


def test_full_size_bigvgan_has_the_published_keys_in_every_naming_style(reference_dir):
    manifest = _manifest(reference_dir, "bigvgan16k_keys.json")
    with torch.device("meta"):
        model = BigVGANGenerator(BIGVGAN_16K_CONFIG)
        folded = model.state_dict()
        assert _shapes(folded) == _manifest_shapes(manifest["keys_after_remove_weight_norm"])
        assert len(folded) == 668
        for style, listed in (("parametrizations", "keys"), ("legacy", "keys_legacy_weight_norm")):
            assert _shapes(unfold_weight_norm(folded, style)) == _manifest_shapes(manifest[listed])
            # ...and each published layout, read as shapes only, folds back to the model's own keys.
            placeholders = {k: torch.empty(shape) for k, shape in _manifest_shapes(manifest[listed]).items()}
            assert _shapes(bigvgan_state_dict_for_loading(placeholders)) == _shapes(folded)
    assert len(manifest["keys"]) == len(manifest["keys_legacy_weight_norm"]) == 784
    assert infer_bigvgan_config(_shapes(folded)) == BIGVGAN_16K_CONFIG
    assert BIGVGAN_16K_CONFIG.hop_samples == 256


# ------------------------------------------------------------------------------------------- weight norm

@pytest.mark.parametrize("conv", [torch.nn.Conv1d(6, 5, 3), torch.nn.ConvTranspose1d(6, 3, 4, 2)])
def test_fold_weight_norm_matches_torch_weight_norm(conv):
    wn = torch.nn.utils.parametrizations.weight_norm(conv)
    with torch.no_grad():
        wn.parametrizations.weight.original0.uniform_(0.5, 2.0)
    state = torch.nn.Sequential(wn).state_dict()
    assert "0.parametrizations.weight.original0" in state
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    for layout in (state, legacy):
        folded = fold_weight_norm(layout)
        assert set(folded) == {"0.weight", "0.bias"}
        torch.testing.assert_close(folded["0.weight"], wn.weight.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(CheckpointError, match="x.safetensors: weight norm of 0 has only its gain"):
        fold_weight_norm({"0.weight_g": state["0.parametrizations.weight.original0"]}, where="x.safetensors")


def test_tiny_vocoder_loads_identically_from_every_layout(tmp_path, one_thread):
    folded = _tiny_vocoder_state()
    reference = BigVGANGenerator(TINY_VOCODER).eval()
    reference.load_state_dict(folded)
    layouts = {
        "parametrizations": unfold_weight_norm(folded, "parametrizations"),
        "legacy": unfold_weight_norm(folded, "legacy"),
        "legacy_under_generator": {"generator." + k: v for k, v in unfold_weight_norm(folded, "legacy").items()},
    }
    mel = torch.randn(1, 80, 6, generator=torch.Generator().manual_seed(3)) - 2.0
    with torch.no_grad():
        expected = reference(mel)
    assert expected.shape == (1, 1, 6 * 256) and 0.001 < expected.abs().max() < 0.99   # not silent, not clipped
    outputs = {}
    for name, state in layouts.items():
        save_tensors_atomic(state, tmp_path / f"{name}.safetensors")
        model = load_bigvgan(tmp_path / f"{name}.safetensors")
        with torch.no_grad():
            outputs[name] = model(mel)
        # Re-saving the loaded (folded) model and loading that gives bit-identical outputs too.
        save_tensors_atomic(model.state_dict(), tmp_path / f"{name}_folded.safetensors")
        with torch.no_grad():
            assert torch.equal(load_bigvgan(tmp_path / f"{name}_folded.safetensors")(mel), outputs[name])
    assert torch.equal(outputs["parametrizations"], outputs["legacy"])
    assert torch.equal(outputs["legacy"], outputs["legacy_under_generator"])
    torch.testing.assert_close(outputs["legacy"], expected, rtol=0, atol=1e-6)   # fold of an unfold: rounding only


def test_vae_weights_are_normalised_once_after_loading_by_the_published_formula(tmp_path, one_thread):
    raw = _tiny_vae_raw_state()
    save_tensors_atomic(raw, tmp_path / "vae.safetensors")
    vae = load_mmaudio_vae(tmp_path / "vae.safetensors")
    for key in ("encoder.conv_in.weight", "encoder.mid.attn_1.qkv.weight", "decoder.up.1.upsample.conv.weight"):
        w = raw[key]
        fan_in = w[0].numel()
        expected = w / (1e-4 + w.flatten(1).norm(dim=1)[:, None, None] / fan_in ** 0.5) / fan_in ** 0.5
        torch.testing.assert_close(vae.state_dict()[key], expected, rtol=1e-6, atol=1e-8)
    assert torch.equal(vae.data_mean, raw["data_mean"]) and vae.data_mean.shape == (1, 80, 1)
    with pytest.raises(RuntimeError, match="not idempotent"):
        vae.normalize_weights_()
    fresh = MMAudioVAE(TINY_VAE)
    fresh.load_state_dict(raw)
    with pytest.raises(RuntimeError, match="normalize_weights_"):
        fresh.encode(torch.zeros(1, 80, 8))
    fresh.normalize_weights_()
    mel = torch.randn(2, 80, 16) - 2.0
    with torch.no_grad():
        mean, logvar = vae.encode(mel)
        assert torch.equal(mean, fresh.encode(mel)[0])
        assert mean.shape == logvar.shape == (2, 20, 8)
        decoded = vae.decode(mean)
    assert decoded.shape == (2, 80, 16) and torch.isfinite(decoded).all()


# ------------------------------------------------------------------------------------------- mel features

def test_mel_filterbank_matches_librosa_slaney_values():
    # Values of librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0, fmax=8000), the reference features.
    bank = slaney_mel_filterbank(16000, 1024, 80, 0.0, 8000.0).double()
    assert bank.shape == (80, 513)
    assert bank.sum().item() == pytest.approx(5.118657639835874, rel=1e-6)
    assert bank[0].sum().item() == pytest.approx(0.06234454084187746, rel=1e-6)
    assert bank[0, 1].item() == pytest.approx(0.011267280206084251, rel=1e-6)
    assert bank[40].max().item() == pytest.approx(0.014444176107645035, rel=1e-6)
    assert [int(bank[i].argmax()) for i in (0, 10, 20, 30, 40, 50, 60, 70, 79)] == \
        [2, 26, 50, 75, 110, 162, 238, 349, 493]
    assert (bank[:, 64] > 0).nonzero().flatten().tolist() == [25, 26]           # 1 kHz lies between bands 25, 26


def test_log_mel_frames_floor_and_tone_position():
    mel = LogMelSpectrogram()
    assert MMAUDIO_16K_MEL.num_frames(16000) == 62 and MMAUDIO_16K_MEL.num_frames(16255) == 63
    silence = mel(torch.zeros(2, 1, 16000))
    assert silence.shape == (2, 80, 62) and torch.equal(silence, torch.full_like(silence, -5.0))   # log10(1e-5)
    t = torch.arange(16000, dtype=torch.float64) / 16000         # float64: a float32 phase is noisy at 1 kHz x 1 s
    tone = mel(0.5 * torch.sin(2 * torch.pi * 1000.0 * t)[None].float())
    assert set(tone[0].argmax(0).tolist()) <= {25, 26}
    # Energy at 1 kHz, the floor near 7 kHz (but in the first and last frames, where the reflect padding folds the
    # tone back on itself with a kink).
    assert tone.max() > 0.5 and torch.equal(tone[0, 70:, 2:-2], torch.full_like(tone[0, 70:, 2:-2], -5.0))


# ------------------------------------------------------------------------------------------- the codec

def test_codec_rates_and_one_second_round_trip_shapes(tiny_codec):
    codec = tiny_codec
    assert (codec.sample_rate, codec.latent_channels) == (MMAUDIO_SAMPLE_RATE_HZ, MMAUDIO_LATENT_CHANNELS) == \
        (16000, 20)
    assert codec.samples_per_latent == 512 and codec.latents_per_second == 31.25
    # 1 s is 31.25 latents: the part shorter than a latent is dropped, so 31 (Ovi's 5 s clip, 121 frames at 24 fps,
    # is 80667 samples -> 157 latents, the length Ovi's checkpoints were trained on).
    assert codec.latent_length(16000) == 31 and codec.latent_length(round(121 / 24 * 16000)) == 157
    t = torch.arange(2 * 16000) / 16000
    wave = (0.3 * torch.sin(2 * torch.pi * 440.0 * t)).reshape(2, 1, 16000)
    latent = codec.encode(wave)
    assert latent.shape == (2, 31, 20) and latent.dtype == torch.float32 and torch.isfinite(latent).all()
    assert not torch.allclose(latent[0], latent[1])                          # two different phases of the tone
    decoded = codec.decode(latent)
    assert decoded.shape == (2, 1, 31 * 512) and decoded.abs().max() <= 1.0
    assert codec.num_samples(31) == 15872
    assert codec.encode(wave[..., :31 * 512 + 511]).shape == (2, 31, 20)    # a tail under 512 samples is dropped
    assert codec.encode(wave[..., :31 * 512 - 1]).shape == (2, 30, 20)


def test_tiny_codec_matches_numbers_from_the_reference_implementation(tiny_codec):
    # Computed once with MMAudio's own MelConverter, VAE and BigVGANVocoder (as Ovi ships them) on the same seeded
    # tiny weights (_tiny_vae_raw_state, _tiny_vocoder_state) and this input.
    t = torch.arange(4096, dtype=torch.float64) / 16000
    wave = (0.4 * torch.sin(2 * torch.pi * 440 * t) * torch.exp(-20 * t) + 0.1 * torch.sin(2 * torch.pi * 3000 * t))
    with torch.no_grad():
        assert tiny_codec.mel(wave.float()[None]).sum().item() == pytest.approx(-5063.23828125, rel=1e-6)
    latent = tiny_codec.encode(wave.float()[None, None])
    assert latent.shape == (1, 8, 20)
    assert latent.abs().sum().item() == pytest.approx(95.88948822021484, rel=1e-5)
    expected_latent = torch.tensor([[-0.259769469499588, -0.4483000636100769, 0.1977110207080841, 0.20474401116371155],
                                    [-0.38472455739974976, -1.5113433599472046, -1.085871696472168, -1.020677089691162],
                                    [0.2790651321411133, 0.18079447746276855, -0.014645751565694809,
                                     -0.29375916719436646]])                    # channels 0-2, latents 0-3
    torch.testing.assert_close(latent[0, :4, :3].T, expected_latent, rtol=0, atol=1e-5)
    waveform = tiny_codec.decode(latent)
    assert waveform.shape == (1, 1, 4096)
    assert waveform.abs().sum().item() == pytest.approx(49.91631317138672, rel=1e-5)
    assert waveform.std().item() == pytest.approx(0.0009204731904901564, rel=1e-3)
    expected_samples = torch.tensor([-0.014659537933766842, -0.013123572804033756, -0.012909076176583767,
                                     -0.012917780317366123, -0.014150869101285934])
    torch.testing.assert_close(waveform[0, 0, [0, 100, 1000, 2000, 4095]], expected_samples, rtol=0, atol=1e-6)


def test_codec_follows_the_input_dtype_and_rejects_bad_shapes(tiny_codec):
    latent = tiny_codec.encode(torch.zeros(1, 1, 2048, dtype=torch.float64))
    assert latent.dtype == torch.float64 and latent.shape == (1, 4, 20)
    with pytest.raises(ValueError, match="downmix"):
        tiny_codec.encode(torch.zeros(1, 2, 4096))
    with pytest.raises(ValueError, match="T >= 512"):
        tiny_codec.encode(torch.zeros(1, 1, 300))
    with pytest.raises(ValueError, match=r"\[B, La, 20\]"):
        tiny_codec.decode(torch.zeros(1, 4, 32))


def test_silence_anchor_is_the_vae_encoding_of_the_mel_floor(tiny_codec):
    anchor = tiny_codec.silence_latent(6, dtype=torch.bfloat16)
    assert anchor.shape == (1, 6, 20) and anchor.dtype == torch.bfloat16
    with torch.no_grad():
        mean, _ = tiny_codec.vae.encode(torch.full((1, 80, 12), -5.0))       # digital silence is the floor
    torch.testing.assert_close(anchor.float(), mean.transpose(1, 2).bfloat16().float())
    assert anchor.float().abs().max() > 0


def test_codec_in_bfloat16_stays_close_to_float32(tmp_path, one_thread):
    files = _tiny_codec_files(tmp_path)
    full = MMAudioCodec.from_files(*files)
    half = MMAudioCodec.from_files(*files, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.mel.window.dtype == torch.float32
    wave = 0.3 * torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(4))
    a, b = full.encode(wave), half.encode(wave)
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.05 * a.abs().max()


# ------------------------------------------------------------------------------------------- wrong files

def test_wrong_files_get_errors_that_name_the_file(tmp_path):
    vae_file, vocoder_file = _tiny_codec_files(tmp_path)
    wide = tmp_path / "vae44k.safetensors"
    save_tensors_atomic(_tiny_vae_raw_state(MMAudioVAEConfig(data_dim=128, embed_dim=40, hidden_dim=8)), wide)
    with pytest.raises(CheckpointError, match=r"vae44k.safetensors: this is the 44.1 kHz MMAudio VAE; Ovi needs the "
                                              r"16 kHz one"):
        MMAudioCodec.from_files(wide, vocoder_file)

    with pytest.raises(CheckpointError, match=r"vocoder.safetensors: this is a BigVGAN vocoder, not the MMAudio VAE"):
        MMAudioCodec.from_files(vocoder_file, vae_file)
    with pytest.raises(CheckpointError, match=r"vae.safetensors: this is an MMAudio mel VAE, not a vocoder"):
        MMAudioCodec.from_files(vae_file, vae_file)

    band128 = tmp_path / "bigvgan128.safetensors"
    save_tensors_atomic(BigVGANGenerator(BigVGANConfig(num_mels=128, upsample_initial_channel=64)).state_dict(),
                        band128)
    with pytest.raises(CheckpointError, match=r"bigvgan128.safetensors: a BigVGAN vocoder of another kind: 128 mel "
                                              r"bands"):
        MMAudioCodec.from_files(vae_file, band128)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(vae_file.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated.safetensors: truncated"):
        MMAudioCodec.from_files(truncated, vocoder_file)

    pickled = tmp_path / "v1-16.pth"
    torch.save(_tiny_vae_raw_state(), pickled)
    with pytest.raises(CheckpointError, match=r"v1-16.pth: not a safetensors file.*comfyui_syncav convert"):
        MMAudioCodec.from_files(pickled, vocoder_file)

    fewer = tmp_path / "fewer.safetensors"
    state = _tiny_vae_raw_state()
    del state["decoder.up.1.upsample.conv.weight"]
    save_tensors_atomic(state, fewer)
    with pytest.raises(CheckpointError, match=r"fewer.safetensors: .*1 missing keys, e.g. "
                                              r"decoder.up.1.upsample.conv.weight"):
        MMAudioCodec.from_files(fewer, vocoder_file)


# ------------------------------------------------------------------------------------------- convert

class NotATensor:
    """Stands for any pickled object: a weights-only load must refuse to rebuild it."""


def test_convert_command_writes_loadable_safetensors(tmp_path, capsys, one_thread):
    vae_pth, vocoder_pth = tmp_path / "v1-16.pth", tmp_path / "best_netG.pt"
    raw = _tiny_vae_raw_state()
    torch.save(raw, vae_pth)
    folded = _tiny_vocoder_state()
    torch.save({"generator": unfold_weight_norm(folded, "legacy"), "steps": 7}, vocoder_pth)

    assert main(["convert", str(vae_pth), str(tmp_path / "vae.safetensors")]) == 0
    assert "mmaudio-vae" in capsys.readouterr().out
    assert main(["convert", str(vocoder_pth), str(tmp_path / "voc.safetensors"), "--kind", "bigvgan"]) == 0
    out = capsys.readouterr().out
    assert "bigvgan" in out and "'generator'" in out and "folded weight norm of" in out

    stored_vae = load_tensors(tmp_path / "vae.safetensors")
    assert set(stored_vae) == set(raw) and all(torch.equal(stored_vae[k], raw[k]) for k in raw)   # raw, unchanged
    stored_vocoder = load_tensors(tmp_path / "voc.safetensors")
    assert set(stored_vocoder) == set(folded)                                # folded to plain .weight
    torch.testing.assert_close(stored_vocoder, folded, rtol=0, atol=1e-6)

    codec = MMAudioCodec.from_files(tmp_path / "vae.safetensors", tmp_path / "voc.safetensors")
    assert codec.decode(torch.zeros(1, 2, 20)).shape == (1, 1, 1024)


def test_convert_refuses_pickled_objects_wrong_kinds_and_the_44k_vae(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": NotATensor()}, evil)
    assert main(["convert", str(evil), str(tmp_path / "evil.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "evil.pth: refused" in err and "weights_only=True" in err and "NotATensor" in err
    assert not (tmp_path / "evil.safetensors").exists()

    vae_pth = tmp_path / "v1-16.pth"
    torch.save(_tiny_vae_raw_state(), vae_pth)
    assert main(["convert", str(vae_pth), str(tmp_path / "x.safetensors"), "--kind", "bigvgan"]) == 2
    assert "--kind bigvgan was asked, but the keys are those of a mmaudio-vae" in capsys.readouterr().err

    wide = tmp_path / "v1-44.pth"
    torch.save(_tiny_vae_raw_state(MMAudioVAEConfig(data_dim=128, embed_dim=40, hidden_dim=8)), wide)
    assert main(["convert", str(wide), str(tmp_path / "y.safetensors")]) == 2
    assert "this is the 44.1 kHz MMAudio VAE" in capsys.readouterr().err

    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(vae_pth.read_bytes()[:500])
    assert main(["convert", str(truncated), str(tmp_path / "z.safetensors")]) == 2
    assert "cut.pth: not a readable torch checkpoint" in capsys.readouterr().err
    assert not any(p.suffix == ".safetensors" for p in tmp_path.iterdir())


def test_convert_keeps_a_wan22_vae_as_published_and_refuses_wan21(tmp_path, capsys, one_thread):
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

    from comfyui_syncav.codecs.wan import WAN22_VAE_CONFIG, WanVideoCodec, wan22_vae_state_dict_to_original

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**WAN22_VAE_CONFIG, "base_dim": 4, "decoder_base_dim": 8})   # the full tiny network
    state = wan22_vae_state_dict_to_original(vae.state_dict())
    state["conv2.weight"] = state["conv2.weight"].half()
    torch.save(state, tmp_path / "Wan2.2_VAE.pth")
    assert main(["convert", str(tmp_path / "Wan2.2_VAE.pth"), str(tmp_path / "wan.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"wan-vae, {len(state)} tensors" in out and "'base_dim': 4" in out
    stored = load_tensors(tmp_path / "wan.safetensors")
    assert stored["conv2.weight"].dtype == torch.float16                    # dtypes kept as stored
    assert set(stored) == set(state) and all(torch.equal(stored[k], v) for k, v in state.items())
    codec = WanVideoCodec.from_file(tmp_path / "wan.safetensors")           # its widths travel in the metadata
    assert codec.vae.config.base_dim == 4 and codec.vae.config.decoder_base_dim == 8

    # A few keys with the right names are not a VAE: the conversion checks the whole network.
    thin = {k: state[k] for k in ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight")}
    torch.save(thin, tmp_path / "thin.pth")
    assert main(["convert", str(tmp_path / "thin.pth"), str(tmp_path / "thin.safetensors")]) == 2
    assert "thin.pth: not a Wan VAE" in capsys.readouterr().err
    partial = dict(state)
    del partial["decoder.head.2.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    assert main(["convert", str(tmp_path / "partial.pth"), str(tmp_path / "partial.safetensors")]) == 2
    assert "1 missing keys, e.g. decoder.conv_out.bias" in capsys.readouterr().err

    wan21 = {**thin, "conv1.weight": torch.randn(32, 32, 1, 1, 1), "conv2.weight": torch.randn(16, 16, 1, 1, 1)}
    torch.save(wan21, tmp_path / "Wan2.1_VAE.pth")
    assert main(["convert", str(tmp_path / "Wan2.1_VAE.pth"), str(tmp_path / "wan21.safetensors")]) == 2
    assert "16 latent channels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["wan.safetensors"]
