"""Text encoders: the embedded tiny encoder (text/embedded.py) and local UMT5 (text/umt5.py), no network."""

from __future__ import annotations

import json
import logging
import zlib

import pytest
import torch

from comfyui_syncav.model.config import PRESETS, TINY_TEXT_DIM
from comfyui_syncav.text.interface import EncodedText, TextEncoder
from comfyui_syncav.text.embedded import HashTokenizer, TinyTextEncoder

# ------------------------------------------------------------------------------------------- tiny encoder


def test_hash_tokenizer_is_stable_lower_cased_and_splits_punctuation():
    tokenizer = HashTokenizer(4096)
    assert tokenizer.words("A Red BALL, bouncing!") == ["a", "red", "ball", ",", "bouncing", "!"]
    # Fixed values: CRC-32 does not change between processes or machines (Python's str hash does).
    assert zlib.crc32(b"ball") % 4096 == 2139
    assert tokenizer("Ball") == tokenizer("ball") == [2139]
    assert tokenizer("") == [] and tokenizer("   ") == []


def test_tiny_encoder_shapes_lengths_and_zero_padding():
    encoder = TinyTextEncoder()
    assert isinstance(encoder, TextEncoder)
    assert (encoder.dim, encoder.max_length) == (TINY_TEXT_DIM, PRESETS["tiny"].video.text_len) == (64, 32)
    out = encoder.encode(["a red ball bounces", "", "click!"])
    assert isinstance(out, EncodedText)
    assert out.embeddings.shape == (3, 32, 64) and out.embeddings.dtype == torch.float32
    assert out.lengths.tolist() == [4, 0, 2] and out.lengths.dtype == torch.int64
    for row, length in enumerate(out.lengths.tolist()):
        assert out.embeddings[row, length:].abs().max().item() == 0.0
        if length:
            # Real rows come out of a LayerNorm: zero mean, unit variance per row, never zero.
            real = out.embeddings[row, :length]
            assert real.mean(dim=-1).abs().max().item() < 1e-4
            assert (real.var(dim=-1, unbiased=False) - 1).abs().max().item() < 1e-3
    assert not torch.isnan(out.embeddings).any()
    empty = encoder.encode([""])
    assert empty.lengths.tolist() == [0] and empty.embeddings.abs().max().item() == 0.0


def test_tiny_encoder_is_deterministic_across_instances_and_batches():
    first, second = TinyTextEncoder(), TinyTextEncoder()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    torch.manual_seed(123)                              # the global RNG plays no part
    third = TinyTextEncoder()
    assert torch.equal(third.state_dict()["token_embedding.weight"], first.state_dict()["token_embedding.weight"])
    alone = first.encode(["a blue ball"]).embeddings
    batched = first.encode(["a blue ball", "a much longer prompt about a green ball that bounces twice"])
    assert (alone[0] - batched.embeddings[0]).abs().max().item() < 1e-5
    other_seed = TinyTextEncoder(seed=1)
    assert (other_seed.encode(["a blue ball"]).embeddings - alone).abs().max().item() > 0.1


def test_tiny_encoder_tells_prompts_apart_and_reads_word_order():
    encoder = TinyTextEncoder()
    red, blue = encoder.encode(["a red ball"]).embeddings, encoder.encode(["a blue ball"]).embeddings
    assert (red[0, 1] - blue[0, 1]).norm().item() > 3.0          # the colour word (measured 6.8)
    assert (red[0, 2] - blue[0, 2]).norm().item() > 1.0          # context reaches "ball" through attention (3.5)
    swapped = encoder.encode(["ball red a"]).embeddings
    assert (swapped[0, 2] - red[0, 0]).norm().item() > 1.0       # same word, other position


def test_tiny_encoder_truncates_long_prompts_with_a_warning(caplog):
    encoder = TinyTextEncoder()
    long_prompt = " ".join(f"word{i}" for i in range(40))
    with caplog.at_level(logging.WARNING, logger="comfyui_syncav.text.embedded"):
        out = encoder.encode([long_prompt])
    assert out.lengths.tolist() == [32] and out.embeddings.shape == (1, 32, 64)
    assert "40 tokens truncated to 32" in caplog.text
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode("a bare string")


def test_tiny_encoder_saves_and_loads_safetensors(tmp_path):
    trained = TinyTextEncoder()
    with torch.no_grad():
        trained.network.token_embedding.weight.mul_(1.5)          # stands in for training
    path = tmp_path / "tiny_text.safetensors"
    trained.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_text.safetensors"]   # no temp file left behind
    prompt = ["a yellow ball bounces"]
    expected = trained.encode(prompt).embeddings
    assert (TinyTextEncoder().encode(prompt).embeddings - expected).abs().max().item() > 1e-3
    loaded = TinyTextEncoder(path)
    assert torch.allclose(loaded.encode(prompt).embeddings, expected, atol=1e-6)
    assert torch.allclose(TinyTextEncoder.from_file(path).encode(prompt).embeddings, expected, atol=1e-6)
    with pytest.raises(ValueError, match="num_layers"):
        TinyTextEncoder(path, num_layers=1)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        TinyTextEncoder(tmp_path / "missing.safetensors")


def test_tiny_encoder_dtype_option():
    out = TinyTextEncoder(dtype=torch.bfloat16).encode(["a red ball", ""])
    assert out.embeddings.dtype == torch.bfloat16
    assert out.embeddings[1].abs().max().item() == 0.0
    reference = TinyTextEncoder().encode(["a red ball"]).embeddings[0]
    assert (out.embeddings[0].float() - reference).abs().max().item() < 0.1


# ------------------------------------------------------------------------------------------- UMT5

WORDS = ["a", "red", "ball", "bounces", "on", "the", "floor", "blue", "click", "loud", ",", "."]


def write_tiny_umt5(folder, d_model: int = 32, seed: int = 0):
    """A random 2-layer UMT5 encoder (d_model 32) saved as transformers does, with a word-level tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    config = UMT5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    model.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def umt5_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("umt5")
    model, tokenizer = write_tiny_umt5(folder)
    return folder, model, tokenizer


def test_umt5_encodes_real_tokens_and_zeroes_the_rest(umt5_folder):
    from comfyui_syncav.text.umt5 import UMT5TextEncoder

    folder, model, tokenizer = umt5_folder
    encoder = UMT5TextEncoder(folder, max_length=16, expected_dim=32)
    assert (encoder.dim, encoder.max_length) == (32, 16)
    out = encoder.encode(["a red  ball bounces on the floor .", "", "loud click"])
    assert out.embeddings.shape == (3, 16, 32)
    # Wan convention: the closing </s> is a real token, so the empty prompt has length 1.
    assert out.lengths.tolist() == [9, 1, 3]
    for row, length in enumerate(out.lengths.tolist()):
        assert out.embeddings[row, length:].abs().max().item() == 0.0
        assert out.embeddings[row, :length].abs().min().item() > 0.0
    # Each prompt's rows equal the encoder run on that prompt alone, without padding.
    ids = tokenizer(["loud click"], return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[12, 11, 1]]
    with torch.no_grad():
        alone = model(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(out.embeddings[2, :3], alone, atol=1e-5)


def test_umt5_offloaded_between_encodes_moves_in_and_back_and_encodes_the_same(umt5_folder):
    from comfyui_syncav.text.umt5 import UMT5TextEncoder

    folder = umt5_folder[0]
    kept = UMT5TextEncoder(folder, max_length=16, expected_dim=32).encode(["loud click", "a ball"])
    offloaded = UMT5TextEncoder(folder, max_length=16, expected_dim=32, device="cpu", offload_device="cpu")
    moves, to = [], offloaded.model.to
    offloaded.model.to = lambda *args, **kwargs: (moves.append(str(args[0])), to(*args, **kwargs))[1]
    out = offloaded.encode(["loud click", "a ball"])
    assert moves == ["cpu", "cpu"]      # in to the compute device for the encode, then back to the offload device
    assert torch.equal(out.embeddings, kept.embeddings) and torch.equal(out.lengths, kept.lengths)


def test_umt5_truncates_with_a_warning(umt5_folder, caplog):
    from comfyui_syncav.text.umt5 import UMT5TextEncoder

    encoder = UMT5TextEncoder(umt5_folder[0], max_length=6)
    with caplog.at_level(logging.WARNING, logger="comfyui_syncav.text.umt5"):
        out = encoder.encode(["a red ball bounces on the floor"])
    assert out.lengths.tolist() == [6] and out.embeddings.shape == (1, 6, 32)
    assert "8 tokens truncated to 6" in caplog.text


def test_umt5_loads_a_single_safetensors_file_with_its_config(umt5_folder, tmp_path):
    from safetensors.torch import save_file

    from comfyui_syncav.text.umt5 import UMT5TextEncoder

    folder, model, _ = umt5_folder
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    weights = tmp_path / "umt5_encoder.safetensors"
    save_file(state, weights)
    encoder = UMT5TextEncoder(weights, config_path=folder / "config.json", tokenizer_path=folder,
                              max_length=16, dtype=torch.bfloat16)
    reference = UMT5TextEncoder(folder, max_length=16)
    prompt = ["blue ball on the floor"]
    single, full = encoder.encode(prompt), reference.encode(prompt)
    assert single.embeddings.dtype == torch.bfloat16
    assert single.lengths.tolist() == full.lengths.tolist() == [6]
    assert (single.embeddings.float() - full.embeddings).abs().max().item() < 0.05 * full.embeddings.abs().max()


def test_umt5_refuses_missing_paths_and_other_models(umt5_folder, tmp_path):
    from safetensors.torch import save_file

    from comfyui_syncav.text.umt5 import UMT5TextEncoder

    folder = umt5_folder[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        UMT5TextEncoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="d_model=32, expected 4096"):
        UMT5TextEncoder(folder, expected_dim=4096)
    t5_folder = tmp_path / "t5"
    t5_folder.mkdir()
    config = json.loads((folder / "config.json").read_text())
    (t5_folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ValueError, match="'t5' model, expected a 'umt5'"):
        UMT5TextEncoder(t5_folder)
    # A safetensors file that is something else entirely.
    wrong = tmp_path / "not_umt5.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match="missing keys"):
        UMT5TextEncoder(wrong, config_path=folder, tokenizer_path=folder)
    with pytest.raises(FileNotFoundError, match="config"):
        UMT5TextEncoder(wrong)
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(ValueError, match="no usable tokenizer"):
        UMT5TextEncoder(folder, tokenizer_path=empty)
    pickle_file = tmp_path / "umt5.pth"
    pickle_file.write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        UMT5TextEncoder(pickle_file)
