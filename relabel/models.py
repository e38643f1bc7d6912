"""Model names, checkpoints and per-model normalization, shared by teacher and student."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import timm

from relabel.settings import PRECISIONS
from relabel.storage.errors import ConfigError, named
from relabel.storage.hashing import sha256_file

# Short names people use for common models -> timm names.
ALIASES = {
    "tresnet_l_v2": "tresnet_v2_l.miil_in21k_ft_in1k",  # USI's teacher (TResNet-L-V2, 83.9%)
    "deit_t": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "vit_t": "vit_tiny_patch16_224",
    "vit_s": "vit_small_patch16_224",
    "vit_b": "vit_base_patch16_224",
    "r50": "resnet50",
}


def resolve_name(name: str) -> str:
    """Alias or timm name -> timm name; unknown names fail with close matches."""
    full = ALIASES.get(name, name)
    arch = full.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        hint = f"; close: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown model {name!r}: not a timm model name or alias{hint}")
    return full


_STATE_KEYS = ("state_dict", "model", "module", "net")


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A plain state_dict, a timm checkpoint, a relabel checkpoint or USI's; never unpickles code."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}); "
                          f"save a state_dict with torch.save(model.state_dict(), path)") from None
    sd = ckpt
    if isinstance(ckpt, dict):
        for k in _STATE_KEYS:
            if isinstance(ckpt.get(k), dict):
                sd = ckpt[k]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{path}: holds no state_dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}


def _classifier_rows(full: str, sd: dict) -> int | None:
    """Classes in a checkpoint: rows of the classifier weight named by the model's pretrained_cfg."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(full)
    names = (cfg.classifier if cfg is not None and cfg.classifier else None) or "fc"
    for name in (names if isinstance(names, (list, tuple)) else [names]):
        w = sd.get(f"{name}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


@dataclass(frozen=True)
class ModelInfo:
    """What the label store records about a model."""

    name: str
    model: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    checkpoint_sha256: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def create(name: str, checkpoint: str | None = None, pretrained: bool = False,
           num_classes: int | None = None, checkpoint_setting: str | None = "teacher_checkpoint",
           **kwargs) -> tuple[torch.nn.Module, ModelInfo]:
    """timm model by name/alias with weights from a checkpoint, the hub, or random init.
    ``checkpoint_setting``: the setting that gives this model local weights instead (None: none does)."""
    full = resolve_name(name)
    sd = load_state_dict(checkpoint) if checkpoint else None
    if sd is not None:
        ck_classes = _classifier_rows(full, sd)
        if num_classes is not None and ck_classes is not None and ck_classes != num_classes:
            raise ConfigError(f"{checkpoint}: has {ck_classes} classes but {num_classes} are needed")
        num_classes = ck_classes or num_classes
    extra = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        model = timm.create_model(full, pretrained=pretrained and sd is None, **extra, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if pretrained and sd is None:
            fix = (f"set {named(checkpoint_setting)} to a local checkpoint file" if checkpoint_setting
                   else f"drop {named('pretrained', True)} to start from random weights")
            raise ConfigError(f"could not get pretrained weights for {full} ({type(e).__name__}); offline? {fix}") from None
        raise
    if sd is not None:
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError:
            fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
            try:
                model.load_state_dict(fn(sd, model) if fn else sd, strict=True)
            except Exception:
                want, have = set(model.state_dict()), set(sd)
                missing, extra = sorted(want - have), sorted(have - want)
                detail = (f"missing {len(missing)} keys, e.g. {missing[0]!r}" if missing else
                          f"unexpected {len(extra)} keys, e.g. {extra[0]!r}" if extra else "tensor shapes differ")
                raise ConfigError(f"{checkpoint}: weights do not fit {full} ({detail}); is {named('teacher')} the "
                                  f"architecture this checkpoint was trained as?") from None
    cfg = model.pretrained_cfg
    info = ModelInfo(
        name=name, model=full, num_classes=model.num_classes,
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(x) for x in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=cfg.get("interpolation", "bicubic"), crop_pct=float(cfg.get("crop_pct", 0.875)),
        checkpoint_sha256=sha256_file(checkpoint)[1] if checkpoint else None,
    )
    return model, info


class Normalize(torch.nn.Module):
    """uint8 NCHW -> float normalized with one model's own mean/std (channels_last on the way)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale - self.shift).contiguous(memory_format=torch.channels_last)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{named('device', 'cuda')} asked for but no CUDA GPU is visible; "
                          f"use {named('device', 'cpu')} or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)




def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> what really runs: fp16 autocast on CUDA (as USI ran its teacher; its noise is far
    below the q8 rounding, bf16's is not: see the README), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """A context for the forward pass: fp32 (none), fp16 or bf16 autocast."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        import contextlib

        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def out_of_memory(device: torch.device, what: str, batch_size: int, after: str) -> str:
    """One line for a batch that does not fit: the device, its memory, the batch size and the fix."""
    mem = ""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            props = torch.cuda.get_device_properties(device)
            mem = (f" ({props.name}: {props.total_memory / 2**30:.1f} GiB, {torch.cuda.max_memory_allocated(device) / 2**30:.1f}"
                   f" GiB allocated at the peak)")
    return (f"{what} ran out of {device.type.upper()} memory{mem} at {named('batch_size', batch_size)}; "
            f"lower {named('batch_size')} and rerun{after}")
