"""LoRA adapters on the joint model: training through peft, files in ComfyUI's key convention, merging without it.

Training (DPO, fine-tuning) injects peft LoRA layers into the towers' linear layers (``add_lora``): the base weights
are frozen and shared, only the low-rank factors train, and ``disabled_adapters`` turns the same network back into
the base model (the DPO reference) without a second copy of the weights.

A LoRA file holds, per adapted linear layer ``<path>`` of the JointModel (``video_model.blocks.3.self_attn.q``)::

    diffusion_model.<path>.lora_A.weight   [rank, in_features]    (peft's A, "down")
    diffusion_model.<path>.lora_B.weight   [out_features, rank]   (peft's B, "up")
    diffusion_model.<path>.alpha           []                     the update is (alpha / rank) * B @ A

Inside ComfyUI the JointModel sits at ``.model.diffusion_model`` of a ModelPatcher, so these keys are what ComfyUI's
own LoRA loader reads (``comfy.lora.load_lora(tensors, comfy_lora_key_map(joint))``, then
``patcher.add_patches(patches, strength)``); ComfyUI computes the same ``(alpha / rank) * B @ A``. Outside ComfyUI,
``apply_lora`` merges a file into the weights in place and hands back a handle that takes it out again.

peft is imported only by ``add_lora``: reading, saving and merging LoRA files does not need it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from ..files.safetensors_io import CheckpointError, count_non_finite, load_weights, read_header, save_tensors_atomic

LORA_FORMAT = "comfyui-syncav lora v1"
ADAPTER_NAME = "default"        # peft's adapter slot; one adapter per model is all this package uses
KEY_PREFIX = "diffusion_model."  # where ComfyUI's ModelPatcher keeps the JointModel

# Target groups -> module paths inside one tower block (``<tower>.blocks.<i>.<suffix>``).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                  "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o"),
    # Cross-modal keys/values: the layers through which one tower reads the other, i.e. where sync lives.
    "fusion": ("cross_attn.k_fusion", "cross_attn.v_fusion"),
    "ffn": ("ffn.0", "ffn.2"),
}
TOWER_MODULES: dict[str, str] = {"video": "video_model", "audio": "audio_model"}

_KEY_PATTERN = re.compile(r"^diffusion_model\.(?P<path>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|alpha)$")


@dataclass(frozen=True)
class LoraSpec:
    """Which layers get an adapter and how big it is.

    rank / alpha: the update is ``(alpha / rank) * B @ A`` with A [rank, in], B [out, rank]; alpha == rank keeps the
    update's scale independent of the rank choice the way most diffusion LoRA trainers default to.
    targets: groups of ``TARGET_GROUPS``; towers: keys of ``TOWER_MODULES``.
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attention", "fusion", "ffn")
    towers: tuple[str, ...] = ("video", "audio")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoraSpec.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout}")
        # Lists (from JSON or a node widget) become tuples so the spec stays hashable and comparable.
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "towers", tuple(self.towers))
        for name, chosen, known in (("targets", self.targets, TARGET_GROUPS), ("towers", self.towers, TOWER_MODULES)):
            unknown = [c for c in chosen if c not in known]
            if unknown or not chosen:
                raise ValueError(f"LoraSpec.{name} must be a non-empty choice of {sorted(known)}, got {list(chosen)}")

    def module_suffixes(self) -> tuple[str, ...]:
        return tuple(s for group in self.targets for s in TARGET_GROUPS[group])

    def target_module_names(self, joint_model: nn.Module) -> list[str]:
        """Exact module paths of ``joint_model`` this spec adapts (``video_model.blocks.0.self_attn.q``, ...)."""
        joint = _joint(joint_model)
        names = []
        for tower in self.towers:
            for i in range(len(getattr(joint, TOWER_MODULES[tower]).blocks)):
                names += [f"{TOWER_MODULES[tower]}.blocks.{i}.{s}" for s in self.module_suffixes()]
        return names

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "LoraSpec":
        return LoraSpec(**json.loads(text))


# ------------------------------------------------------------------------------------------------ helpers

def _joint(model: nn.Module) -> nn.Module:
    """The JointModel itself, whether given directly or wrapped (``SyncAVModel.diffusion_model``)."""
    return getattr(model, "diffusion_model", model)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers of the joint model by module path (``video_model.blocks.0.self_attn.q``); {} if none."""
    # A model can only hold peft layers if peft was imported: checking sys.modules keeps plain loading peft-free.
    layer_module = sys.modules.get("peft.tuners.lora.layer")
    if layer_module is None:
        return {}
    return {name: m for name, m in _joint(model).named_modules() if isinstance(m, layer_module.LoraLayer)}


def _base_linear(module: nn.Module) -> nn.Module:
    """The layer holding the base weight: itself, or a peft layer's ``base_layer``."""
    return getattr(module, "base_layer", module)


def _tower_of(path: str) -> str | None:
    head = path.split(".", 1)[0]
    return next((tower for tower, module in TOWER_MODULES.items() if module == head), None)


# ------------------------------------------------------------------------------------------------ training

def add_lora(model: nn.Module, spec: LoraSpec = LoraSpec()) -> nn.Module:
    """Inject LoRA adapters (peft) into ``model`` in place and return it.

    Afterwards only the LoRA factors have ``requires_grad`` (the training loop trains exactly those); B starts at
    zero, so the model's output is unchanged until it trains. The spec is kept on the model for ``save_lora``.
    """
    from peft import LoraConfig, inject_adapter_in_model  # lazy: ~seconds of import that only training needs

    joint = _joint(model)
    if lora_layers(joint):
        raise ValueError("add_lora: the model already has LoRA adapters (merge or discard them first)")
    names = spec.target_module_names(joint)
    modules = dict(joint.named_modules())
    not_linear = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if not_linear:
        raise ValueError(f"add_lora: these targets are not linear layers of the model: {not_linear[:3]}")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=names,
                        bias="none", init_lora_weights=True)  # A: Kaiming uniform, B: zeros -> a no-op at start
    inject_adapter_in_model(config, joint, adapter_name=ADAPTER_NAME)
    # peft makes the factors in the base weight's dtype: over an fp8 base (an fp8 file) they would be fp8, which
    # cannot train. They are trained in the dtype the model computes in (float32 for a float32 model).
    adapter_dtype = joint.working_dtype() if hasattr(joint, "working_dtype") else torch.float32
    for layer in lora_layers(joint).values():
        for factor in (layer.lora_A, layer.lora_B):
            if factor[ADAPTER_NAME].weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                factor[ADAPTER_NAME].to(adapter_dtype)
    # peft freezes the base on first injection; stating it here keeps the contract independent of that detail.
    adapter_params = {id(p) for layer in lora_layers(joint).values()
                      for p in list(layer.lora_A.parameters()) + list(layer.lora_B.parameters())}
    for p in joint.parameters():
        p.requires_grad_(id(p) in adapter_params)
    joint.lora_spec = spec
    return model


@contextmanager
def disabled_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: the same weights with every LoRA adapter switched off (the DPO reference).

    No weights are copied. ``requires_grad`` flags are restored on exit (peft's toggle would otherwise re-enable
    gradients on adapters the caller froze).
    """
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("disabled_adapters: the model has no LoRA adapters; a reference made by disabling them "
                         "would be the policy itself (call add_lora first)")
    was_disabled = [layer.disable_adapters for layer in layers]
    grad_flags = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for p, flag in grad_flags:
            p.requires_grad_(flag)


# ------------------------------------------------------------------------------------------------ files

def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained adapters as ``{comfy key: tensor}`` (see the module docstring), detached, on their device."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("lora_state_dict: the model has no LoRA adapters")
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in layers.items():
        prefix = f"{KEY_PREFIX}{path}"
        tensors[f"{prefix}.lora_A.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach()
        tensors[f"{prefix}.lora_B.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER_NAME]), dtype=torch.float32)
    return tensors


def save_lora(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, object] | None = None) -> None:
    """Write the adapters atomically to a safetensors file, with the spec and the base model in its metadata.

    metadata: extra entries (str values kept, others JSON-encoded), e.g. the training config or the step.
    """
    joint = _joint(model)
    tensors = lora_state_dict(joint)
    spec = getattr(joint, "lora_spec", None)
    header = {"format": LORA_FORMAT, "base_model": getattr(joint.config, "name", "custom"),
              "base_config": joint.config.to_json()}
    if spec is not None:
        header["lora_spec"] = spec.to_json()
    for key, value in (metadata or {}).items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(value)
    save_tensors_atomic(tensors, path, header)


def _check_lora_keys(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """Group ``{comfy key: tensor}`` by module path -> {"lora_A.weight", "lora_B.weight", "alpha"?}; clear errors."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        match = _KEY_PATTERN.match(key)
        if match is None:
            unknown.append(key)
            continue
        by_module.setdefault(match["path"], {})[match["part"]] = tensor
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} keys do not follow the LoRA key convention "
                              f"'diffusion_model.<module>.lora_A.weight / .lora_B.weight / .alpha': {unknown[:3]}")
    if not by_module:
        raise CheckpointError(f"{where}: holds no LoRA weights")
    broken = []
    for path, parts in by_module.items():
        a, b = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        not_float = [f"{part} is {t.dtype}" for part, t in parts.items() if not t.is_floating_point()]
        non_finite = [f"{part} holds {n} NaN/inf values" for part, t in parts.items() if (n := count_non_finite(t))]
        if a is None or b is None:
            broken.append(f"{path}: lora_A and lora_B must both be present")
        elif not_float or non_finite:
            broken.append(f"{path}: expected finite floating-point factors, but {', '.join(not_float + non_finite)}")
        elif a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            broken.append(f"{path}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not [rank, in] and "
                          "[out, rank]")
        elif a.shape[0] < 1:
            broken.append(f"{path}: rank 0 (lora_A {list(a.shape)}): expected a rank >= 1")
        elif "alpha" in parts and parts["alpha"].numel() != 1:
            broken.append(f"{path}: alpha must be one number, got shape {list(parts['alpha'].shape)}")
        elif "alpha" in parts and not float(parts["alpha"]) > 0:
            broken.append(f"{path}: alpha must be > 0 (the update is alpha / rank * B @ A), got "
                          f"{float(parts['alpha']):g}")
    if broken:
        raise CheckpointError(f"{where}: {len(broken)} malformed LoRA modules: " + "; ".join(broken[:3]))
    return by_module


def load_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA file -> (tensors by comfy key, metadata). Checks the key convention, not the target model
    (``apply_lora`` / ``check_lora_fits`` do that)."""
    tensors = load_weights(path)           # also refuses non-float and NaN/inf tensors, naming the first
    by_module = _check_lora_keys(tensors, str(path))
    metadata = read_header(path)[1]
    if "lora_spec" in metadata:
        # The spec travels with the file (DPO resumes from it): a corrupted one must fail here, not at resume.
        try:
            spec = LoraSpec.from_json(metadata["lora_spec"])
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{path}: metadata 'lora_spec' is not a LoRA spec ({error}); found "
                                  f"{metadata['lora_spec'][:120]!r}") from None
        ranks = sorted({int(parts["lora_A.weight"].shape[0]) for parts in by_module.values()})
        if ranks != [spec.rank]:
            raise CheckpointError(f"{path}: metadata 'lora_spec' says rank {spec.rank}, the tensors have rank "
                                  f"{', '.join(map(str, ranks))}: a corrupted or edited file")
    return tensors, metadata


def check_lora_fits(model: nn.Module, lora_tensors: Mapping[str, torch.Tensor], where: str = "LoRA"
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Raise ``CheckpointError`` naming the first mismatches when the LoRA targets modules the model does not have
    or has in other shapes (a LoRA for another architecture). Returns the LoRA grouped by module path."""
    by_module = _check_lora_keys(lora_tensors, where)
    modules = dict(_joint(model).named_modules())
    mismatches = []
    for path, parts in by_module.items():
        module = modules.get(path)
        weight = getattr(_base_linear(module), "weight", None) if module is not None else None
        if weight is None or weight.dim() != 2:
            mismatches.append(f"{path}: no such linear layer in the model")
            continue
        delta_shape = [parts["lora_B.weight"].shape[0], parts["lora_A.weight"].shape[1]]
        if delta_shape != list(weight.shape):
            mismatches.append(f"{path}: LoRA gives [out, in] = {delta_shape}, the model's weight is "
                              f"{list(weight.shape)}")
    if mismatches:
        raise CheckpointError(f"{where} does not fit this model ({len(mismatches)} of {len(by_module)} modules "
                              "differ; a LoRA trained on another architecture or preset?): "
                              + "; ".join(mismatches[:3]))
    return by_module


# ------------------------------------------------------------------------------------------------ merging

class MergedLora:
    """Handle of a LoRA merged into a model's weights by ``apply_lora``; ``restore()`` takes it out again.

    Nothing is copied: restoring subtracts the same update it added (recomputed from the LoRA factors), so the
    weights come back to within float rounding of the base (one ulp); strength 0 never touches a weight at all.
    Usable as a context manager.
    """

    def __init__(self, merged: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]):
        self._merged = merged    # (weight, B, A, scale) per patched layer
        self.num_layers = len(merged)

    @staticmethod
    def _delta(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
        # The product in float32 at least, so low-precision weights get one rounding, not two.
        dtype = torch.promote_types(weight.dtype, torch.float32)
        return (scale * (b.to(weight.device, dtype) @ a.to(weight.device, dtype))).to(weight.dtype)

    @torch.no_grad()
    def restore(self) -> None:
        for weight, b, a, scale in self._merged:
            weight.sub_(self._delta(weight, b, a, scale))
        self._merged = []

    def __enter__(self) -> "MergedLora":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@torch.no_grad()
def apply_lora(model: nn.Module, lora_tensors: Mapping[str, torch.Tensor], strength_video: float = 1.0,
               strength_audio: float = 1.0, where: str = "LoRA") -> MergedLora:
    """Merge ``W += strength * (alpha / rank) * B @ A`` into the model's weights in place (the plain-PyTorch path;
    ComfyUI patches through its ModelPatcher instead). Per-tower strengths; a tower at strength 0 is left untouched,
    bit for bit. A missing alpha means alpha = rank (ComfyUI's convention). Returns the handle that restores.
    where: how errors name the LoRA (its file). A LoRA that does not fit is refused before any weight changes; one
    whose update would make a weight NaN / inf is refused and the layers merged before it are restored.
    """
    by_module = check_lora_fits(model, lora_tensors, where)
    strengths = {"video": float(strength_video), "audio": float(strength_audio)}
    modules = dict(_joint(model).named_modules())
    merged = []
    for path, parts in by_module.items():
        strength = strengths.get(_tower_of(path), 1.0)
        if strength == 0.0:
            continue
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        rank = a.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        weight = _base_linear(modules[path]).weight
        scale = strength * alpha / rank
        patched = weight + MergedLora._delta(weight, b, a, scale)
        bad = count_non_finite(patched)
        if bad:
            # Finite factors can still overflow the weight's dtype (corrupted or absurdly scaled ones): an inf
            # weight would be merged for good (restoring subtracts inf). Take out what was merged and refuse.
            MergedLora(merged).restore()
            raise CheckpointError(f"{where}: merging it into {path} at strength {strength:g} gives {bad} NaN/inf "
                                  f"weights (|B @ A| up to {float((b.float() @ a.float()).abs().max()):.3g}, alpha "
                                  f"{alpha:g}, rank {rank}): the factors are corrupted or far too large")
        weight.copy_(patched)
        merged.append((weight, b, a, scale))
    return MergedLora(merged)


def split_by_tower(lora_tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"video": {...}, "audio": {...}}``: per-tower strengths in ComfyUI are two ``add_patches`` calls."""
    parts: dict[str, dict[str, torch.Tensor]] = {tower: {} for tower in TOWER_MODULES}
    for key, tensor in lora_tensors.items():
        tower = _tower_of(key[len(KEY_PREFIX):]) if key.startswith(KEY_PREFIX) else None
        if tower is None:
            raise CheckpointError(f"LoRA key {key!r} belongs to neither tower "
                                  f"({', '.join(KEY_PREFIX + m for m in TOWER_MODULES.values())})")
        parts[tower][key] = tensor
    return parts


def comfy_lora_key_map(model: nn.Module) -> dict[str, str]:
    """ComfyUI's LoRA key map for the JointModel: ``{"diffusion_model.<path>": "diffusion_model.<param key>"}`` for
    every weight, the second being the key in the ModelPatcher's state dict (``<path>.weight``; a peft-wrapped layer
    keeps its weight under ``<path>.base_layer.weight``). Pass it to ``comfy.lora.load_lora``. Pure Python."""
    key_map = {}
    for name, _ in _joint(model).named_parameters():
        if not name.endswith(".weight") or ".lora_" in name:
            continue
        path = name[:-len(".weight")].replace(".base_layer", "")
        key_map[f"{KEY_PREFIX}{path}"] = f"{KEY_PREFIX}{name}"
    return key_map
