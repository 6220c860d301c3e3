"""Fuzz the weight-file loaders with mutated copies of small valid safetensors files (not collected by pytest).

    python tests/bad_input/fuzz_weight_files.py --iterations 300 --seed 0

Valid tiny files (a micro joint model, a LoRA for it, the tiny text encoder, a tiny MMAudio VAE) are mutated: bit
flips in the header or the data, truncation, a lying header length, trailing junk, NaN/inf written into a tensor, and
structured header edits (a shape reshaped to the same byte count, a dtype relabelled, offsets shifted, a key renamed
or dropped, the config metadata edited) that get past the format checks to the loaders' own. Each mutant goes through
its loader and counts as:

- loaded: it loaded, and every weight is finite (a mutant that loads with NaN/inf weights is a finding);
- clean error: ``CheckpointError`` / ``ValueError`` whose message names the file;
- finding: anything else (another exception type, an error that does not name the file, a hang), printed with the
  mutation and the command that replays that one iteration.

Iteration ``i`` of seed ``S`` is reproducible on its own: ``--seed S --only i``. The last line is
``RESULT iterations=N clean_errors=X loaded=Y findings=Z``; the exit status is 1 when there are findings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import struct
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # tests/: micro_models and bad_input

import torch  # noqa: E402

from bad_input.test_weight_files import lora_tensors  # noqa: E402
from comfyui_syncav.model.checkpoint import load_joint_model, save_joint_model  # noqa: E402
from comfyui_syncav.runtime.lora import apply_lora, check_lora_fits, load_lora  # noqa: E402
from comfyui_syncav.codecs.mmaudio_vae import MMAudioVAE, MMAudioVAEConfig, load_mmaudio_vae  # noqa: E402
from comfyui_syncav.files.safetensors_io import count_non_finite, save_tensors_atomic  # noqa: E402
from comfyui_syncav.text.embedded import TinyTextEncoder  # noqa: E402
from micro_models import micro_model  # noqa: E402

SECONDS_PER_LOAD = 20        # a load slower than this is a hang (the valid files load in milliseconds)
NON_FINITE = {"F32": [struct.pack("<f", math.nan), struct.pack("<f", math.inf)],
              "F16": [b"\x00\x7e", b"\x00\x7c"], "BF16": [b"\xc0\x7f", b"\x80\x7f"]}


# ------------------------------------------------------------------------------------------- the targets

def build_targets(folder: Path) -> dict:
    """{name: (file bytes, load(path) -> tensors that must be finite)} for each valid file."""
    model = micro_model()
    joint = folder / "joint.safetensors"
    save_joint_model(model, joint)
    lora = folder / "lora.safetensors"
    save_tensors_atomic(lora_tensors(), lora)
    text = folder / "text.safetensors"
    TinyTextEncoder(dim=16, vocab_size=64, num_layers=1, num_heads=2, ffn_dim=32, max_length=8).save(text)
    vae = folder / "vae.safetensors"
    torch.manual_seed(0)
    save_tensors_atomic({k: v.detach().clone() for k, v in MMAudioVAE(MMAudioVAEConfig(hidden_dim=8))
                         .state_dict().items()}, vae)

    def load_joint(path):
        return load_joint_model(path).state_dict()

    pristine = {k: v.clone() for k, v in model.state_dict().items()}

    def load_and_apply_lora(path):
        model.load_state_dict(pristine)           # each mutant starts from the same base weights
        tensors, _ = load_lora(path)
        check_lora_fits(model, tensors, where=str(path))
        with apply_lora(model, tensors, where=str(path)):     # merged, checked below, taken out again
            return {k: v.clone() for k, v in model.state_dict().items()}

    def load_text(path):
        return TinyTextEncoder.from_file(path).state_dict()

    def load_vae(path):
        return load_mmaudio_vae(path).state_dict()

    return {"joint": (joint.read_bytes(), load_joint), "lora": (lora.read_bytes(), load_and_apply_lora),
            "text": (text.read_bytes(), load_text), "vae": (vae.read_bytes(), load_vae)}


# ------------------------------------------------------------------------------------------- mutations

def split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def tensor_keys(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def flip_header_bits(data, rng):
    (length,) = struct.unpack("<Q", data[:8])
    out, spots = bytearray(data), []
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(8, 8 + length)
        bit = 1 << rng.randrange(8)
        out[i] ^= bit
        spots.append(f"{i}^{bit:#x}")
    return bytes(out), f"header bit flips at {', '.join(spots)}"


def flip_data_bits(data, rng):
    (length,) = struct.unpack("<Q", data[:8])
    out, spots = bytearray(data), []
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(8 + length, len(data))
        bit = 1 << rng.randrange(8)
        out[i] ^= bit
        spots.append(f"{i}^{bit:#x}")
    return bytes(out), f"data bit flips at {', '.join(spots)}"


def truncate(data, rng):
    size = rng.choice([rng.randrange(0, 16), rng.randrange(0, len(data))])
    return data[:size], f"truncated to {size} of {len(data)} bytes"


def lie_about_header_length(data, rng):
    (length,) = struct.unpack("<Q", data[:8])
    lie = rng.choice([length + rng.randint(-64, 64), rng.randrange(0, 2 ** 64), 0, len(data), 2 ** 63])
    lie = max(0, min(lie, 2 ** 64 - 1))
    return struct.pack("<Q", lie) + data[8:], f"header length {length} -> {lie}"


def append_junk(data, rng):
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data + junk, f"{len(junk)} junk bytes appended"


def inject_non_finite(data, rng):
    header, body = split(data)
    candidates = [k for k in tensor_keys(header) if header[k]["dtype"] in NON_FINITE
                  and header[k]["data_offsets"][1] > header[k]["data_offsets"][0]]
    key = rng.choice(candidates)
    info = header[key]
    size = len(NON_FINITE[info["dtype"]][0])
    begin, end = info["data_offsets"]
    position = begin + size * rng.randrange((end - begin) // size)
    value = rng.choice(NON_FINITE[info["dtype"]])
    body = body[:position] + value + body[position + size:]
    return join(header, body), f"{'NaN' if value == NON_FINITE[info['dtype']][0] else 'inf'} written into {key}"


def edit_header(data, rng):
    """A structured edit that keeps the JSON valid, so the mutant reaches the checks after the format's."""
    header, body = split(data)
    keys = tensor_keys(header)
    key = rng.choice(keys)
    info = header[key]
    edit = rng.choice(["reshape", "relabel-dtype", "shift-offsets", "rename", "drop", "duplicate-span", "metadata",
                       "empty-shape", "zero-dim"])
    numel = math.prod(info["shape"])
    if edit == "reshape" and numel > 1:
        factor = next((f for f in (2, 3, 4, 5, 8) if numel % f == 0), 1)
        info["shape"] = rng.choice([[numel], [factor, numel // factor], [numel // factor, factor], [1, numel]])
    elif edit == "relabel-dtype":
        info["dtype"] = rng.choice(["I32", "U32", "F16", "BF16", "I64", "F64", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                                    "I16", "F7", ""])
    elif edit == "shift-offsets":
        delta = rng.choice([-4, 4, -1, 1, 1 << 20])
        info["data_offsets"] = [info["data_offsets"][0] + delta, info["data_offsets"][1] + delta]
    elif edit == "rename":
        header[key.replace(".", rng.choice(["_", ".x.", "..", ""]), 1)] = header.pop(key)
    elif edit == "drop":
        del header[key]
    elif edit == "duplicate-span":
        other = rng.choice(keys)
        info["data_offsets"] = list(header[other]["data_offsets"])
    elif edit == "empty-shape":
        info["shape"] = []
    elif edit == "zero-dim" and info["shape"]:
        info["shape"][rng.randrange(len(info["shape"]))] = 0
    elif edit == "metadata":
        return edit_metadata(header, body, rng)
    return join(header, body), f"header edit {edit} of {key}: {json.dumps(header.get(key, info))[:160]}"


def edit_metadata(header, body, rng):
    metadata = header.setdefault("__metadata__", {})
    if not metadata:
        metadata["syncav_config"] = "{}"
    name = rng.choice(sorted(metadata))
    text = metadata[name]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(value, dict) and value:
        path, node = [], value
        while isinstance(node, dict) and node:
            field = rng.choice(sorted(node))
            path.append(field)
            if not isinstance(node[field], dict):
                node[field] = rng.choice([0, -1, 1, 3, 2 ** 40, "x", None, [], 1.5, True, 10 ** 6])
                break
            node = node[field]
        metadata[name] = json.dumps(value)
        what = f"{name}.{'.'.join(path)} = {metadata[name][:160]}"
    else:
        metadata[name] = rng.choice(["", "{", "[]", "null", "1e999", "\u0000"])
        what = f"{name} = {metadata[name]!r}"
    return join(header, body), f"metadata edit {what}"


MUTATIONS = [flip_header_bits, flip_data_bits, truncate, lie_about_header_length, append_junk, inject_non_finite,
             edit_header, edit_header]


# ------------------------------------------------------------------------------------------- the run

class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_one(targets: dict, folder: Path, seed: int, iteration: int) -> tuple[str, str]:
    """(outcome "loaded" | "clean" | "finding", description) of one mutant."""
    rng = random.Random(f"{seed}:{iteration}")
    name = rng.choice(sorted(targets))
    data, load = targets[name]
    mutation = rng.choice(MUTATIONS)
    mutant, what = mutation(data, rng)
    path = folder / f"{name}_{iteration}.safetensors"
    path.write_bytes(mutant)
    described = f"{name} file, {what}"
    signal.alarm(SECONDS_PER_LOAD)
    try:
        tensors = load(path)
        signal.alarm(0)
        bad = {k: n for k, v in tensors.items() if (n := count_non_finite(v))}
        if bad:
            return "finding", f"{described}: LOADED with non-finite weights {dict(list(bad.items())[:3])}"
        return "loaded", described
    except Hang:
        return "finding", f"{described}: no answer within {SECONDS_PER_LOAD} s"
    except ValueError as error:    # CheckpointError is a ValueError
        signal.alarm(0)
        if path.name not in str(error) or "Traceback" in str(error):
            return "finding", f"{described}: {type(error).__name__} without the file name: {error}"
        return "clean", f"{described}: {error}"
    except Exception as error:     # noqa: BLE001 - any other type is what this script looks for
        signal.alarm(0)
        trace = "".join(traceback.format_exception(error)[-3:])
        return "finding", f"{described}: {type(error).__name__}: {error}\n{trace}"
    finally:
        signal.alarm(0)
        path.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, default=None, metavar="I", help="replay iteration I alone")
    parser.add_argument("--verbose", action="store_true", help="print every outcome, not only the findings")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    counts = {"loaded": 0, "clean": 0, "finding": 0}
    iterations = [args.only] if args.only is not None else range(args.iterations)
    with tempfile.TemporaryDirectory(prefix="syncav_fuzz_") as tmp:
        folder = Path(tmp)
        targets = build_targets(folder)
        for i in iterations:
            outcome, description = run_one(targets, folder, args.seed, i)
            counts[outcome] += 1
            if outcome == "finding":
                print(f"FINDING iteration {i} (replay: {sys.argv[0]} --seed {args.seed} --only {i}): {description}",
                      flush=True)
            elif args.verbose:
                print(f"{outcome} iteration {i}: {description}", flush=True)
        leftovers = sorted(p.name for p in folder.iterdir()
                           if p.name not in {f"{t}.safetensors" for t in ("joint", "lora", "text", "vae")})
    if leftovers:
        print(f"FINDING files left behind: {leftovers}")
        counts["finding"] += 1
    print(f"RESULT iterations={len(iterations)} clean_errors={counts['clean']} loaded={counts['loaded']} "
          f"findings={counts['finding']}")
    return 1 if counts["finding"] else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
