"""The teacher: batched inference on uint8 views -> top-k log-probabilities (+ the rest bin).

Three kinds answer the same calls (``logits``, ``topk``, ``record``, ``num_classes``, ``device``):
a timm model (``Teacher``), an ensemble averaging its members' probabilities (``EnsembleTeacher``,
as Apple's ImageNet+ and MEAL V2 do), and any callable ``pixels uint8 NCHW -> logits``
(``FunctionTeacher``: a torchvision or Hugging Face model, an ONNX session).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from relabel.storage.errors import ConfigError, UserError, named
from relabel.storage.hashing import sha256_file

from relabel.settings import DEVICE_HELP, MAX_IMG_SIZE, PRECISIONS, check_settings, check_value, device_name, setting

from .models import Normalize, autocast, create, pick_device, resolve_precision

MAX_CLASSES = 1 << 20  # what a store's class index array (uint32) and a source's class list allow


def _a_name(name: str) -> str:
    if not name.strip():
        raise ValueError("a non-empty name")
    return name


@dataclass
class TeacherSettings:
    """A teacher's own settings with their limits: ``FunctionTeacher`` and ``EnsembleTeacher``
    check what they are given here, as the CLI checks its options."""

    num_classes: int = setting(1000, help="Classes of the teacher's logits.", ge=1, le=MAX_CLASSES)
    name: str = setting("teacher", help="Name recorded in the store (resume and verify compare it).", check=_a_name)
    input_size: int = setting(224, help="The size the teacher sees.", ge=8, le=MAX_IMG_SIZE)
    device: str = setting("cpu", help=DEVICE_HELP, check=device_name)
    precision: str = setting("fp32", help="fp32, fp16, bf16 or auto.", choices=PRECISIONS)
    teacher_weight: list[float] | None = setting(None, help="One weight per ensemble member.", gt=0)

    __post_init__ = check_settings


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, k), log-probs (B, k+1)): top-k under the full softmax plus log(leftover mass)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top, idx = logp.topk(k, dim=-1)
    rest = torch.logsumexp(logp.scatter(-1, idx, float("-inf")), dim=-1, keepdim=True)
    return idx, torch.cat([top, rest], dim=-1)


class Teacher:
    """A timm classifier in eval mode that sees uint8 pixels and normalizes them its own way."""

    def __init__(self, name: str, checkpoint: str | None = None, device: str = "auto",
                 precision: str = "auto", pretrained: bool = True, num_classes: int | None = None,
                 own_size: bool = False, compile: bool | str = False):
        self.device = pick_device(device)
        self.own_size = own_size  # resize each view to this model's own input size (ensembles)
        model, self.info = create(name, checkpoint=checkpoint, pretrained=pretrained, num_classes=num_classes)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        # torch.compile: same labels within fp32 noise (verify checks them against eager), faster on
        # GPUs. True means inductor; a string names another torch.compile backend.
        self.compiled = compile_backend(compile)
        self.forward = self.model if self.compiled is None else torch.compile(self.model, backend=self.compiled)
        self._pad = 0  # compiled: batches padded to the largest seen, so a short last batch never recompiles
        self.normalize = Normalize(self.info.mean, self.info.std).to(self.device)
        self.precision = resolve_precision(self.device, precision)  # what runs, never "auto"
        # TF32 changes fp32 matmuls on Ampere and later: part of what the labels were made with.
        self.tf32 = bool(self.device.type == "cuda" and self.precision == "fp32"
                         and torch.backends.cuda.matmul.allow_tf32)
        self.weights = "checkpoint" if checkpoint else ("pretrained" if pretrained else "random")

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_size(self) -> int:
        return self.info.input_size

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: uint8 (B, 3, H, W) on any device."""
        x = self.normalize(pixels.to(self.device, non_blocking=True))
        if self.own_size and x.shape[-1] != self.info.input_size:  # the same crop at this model's size
            x = F.interpolate(x, size=(self.info.input_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=True).contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if self.compiled is not None and 0 < n < self._pad:  # eval mode: rows never see each other
            x = torch.cat([x, x.new_zeros((self._pad - n, *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)
        self._pad = max(self._pad, n)
        with autocast(self.device, self.precision):
            return self.forward(x)[:n].float()

    def topk(self, pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _checked_topk(self, pixels, k)

    def record(self) -> dict:
        """What the store header says about the teacher: weights (checkpoint, pretrained or random)
        and the precision, device type and TF32 setting it really ran in."""
        d = self.info.to_dict()
        d.update(precision=self.precision, device_type=self.device.type, tf32=self.tf32, weights=self.weights)
        if self.own_size:
            d["own_size"] = True
        return d


def compile_backend(compile: bool | str | None) -> str | None:
    """``--compile`` as a torch.compile backend name (None: eager)."""
    if not compile:
        return None
    if compile is True:
        return "inductor"
    import torch._dynamo

    if compile not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"unknown torch.compile backend {compile!r}; use one of "
                        f"{', '.join(torch._dynamo.list_backends())}")
    return compile


@torch.inference_mode()
def _checked_topk(teacher, pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k + rest log-probs; raises NonFiniteOutput (with the rows) rather than store NaN."""
    logits = teacher.logits(pixels)
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteOutput(torch.nonzero(bad)[:, 0].cpu().tolist(), teacher.precision)
    return topk_logprobs(logits, k)


class PendingTopk:
    """Top-k labels on their way from the device (``start_topk``). ``result()`` waits for these
    copies only, not for work queued after them, and refuses non-finite rows as ``topk`` does."""

    def __init__(self, idx: torch.Tensor, logp: torch.Tensor, bad: torch.Tensor, precision: str, done=None):
        self._idx, self._logp, self._bad, self._precision, self._done = idx, logp, bad, precision, done

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices (B, k) int64, log-probs (B, k+1) float32) as host arrays."""
        if self._done is not None:
            self._done.synchronize()
        bad = self._bad.numpy()
        if bad.any():
            raise NonFiniteOutput(np.nonzero(bad)[0].tolist(), self._precision)
        return self._idx.numpy(), self._logp.numpy()


@torch.inference_mode()
def start_topk(teacher, pixels: torch.Tensor, k: int) -> PendingTopk:
    """Queue the teacher and top-k for ``pixels`` and the copies of the result to the host, without
    waiting: stage one queues the next batch before it reads this one, so the device need not wait
    while the host stores labels. On a CPU the result is ready at once."""
    logits = teacher.logits(pixels)
    bad = ~torch.isfinite(logits).all(dim=1)
    idx, logp = topk_logprobs(logits, k)
    if logits.device.type != "cuda":
        return PendingTopk(idx.cpu(), logp.cpu(), bad.cpu(), teacher.precision)
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in (idx, logp, bad)]
    done = torch.cuda.Event(blocking=True)  # a waiting host sleeps instead of spinning a core
    done.record(torch.cuda.current_stream(logits.device))  # after the copies, on their device's stream
    return PendingTopk(*host, teacher.precision, done)


class EnsembleTeacher:
    """Members see the same view (each at its own normalization); the label is the top-k of the
    weighted average of their probabilities. ``logits`` returns log of that average: a valid set
    of logits, since log_softmax(log p) = log p."""

    def __init__(self, members: Sequence[Teacher], weights: Sequence[float] | None = None):
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least two teachers (got {len(members)}); use the teacher "
                              f"itself")
        weights = check_value(TeacherSettings, "teacher_weight", None if weights is None else list(weights))
        classes = {m.num_classes for m in members}
        if len(classes) != 1:
            raise ConfigError(f"ensemble members disagree on the number of classes "
                            f"({', '.join(f'{m.info.model}: {m.num_classes}' for m in members)})")
        w = [1.0] * len(members) if weights is None else [float(x) for x in weights]
        if len(w) != len(members) or any(not math.isfinite(x) or x <= 0 for x in w):
            raise ConfigError(f"{named('teacher_weight')} needs one positive weight per teacher ({len(members)}); "
                            f"got {list(w)}")
        self.members, self.weights = list(members), [x / sum(w) for x in w]
        self.device, self.precision = members[0].device, members[0].precision
        self.tf32 = members[0].tf32
        self._logw = torch.tensor(self.weights, dtype=torch.float32, device=self.device).log()

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def input_size(self) -> int:
        return self.members[0].input_size

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        lp = torch.stack([torch.log_softmax(m.logits(pixels), -1) for m in self.members])  # (M, B, C)
        return torch.logsumexp(lp + self._logw[:, None, None], dim=0)

    def topk(self, pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _checked_topk(self, pixels, k)

    def record(self) -> dict:
        members = [{**m.record(), "weight": w} for m, w in zip(self.members, self.weights)]
        first = members[0]
        return {"name": "ensemble", "model": "ensemble", "members": members, "num_classes": self.num_classes,
                "input_size": first["input_size"], "mean": first["mean"], "std": first["std"],
                "interpolation": first["interpolation"], "crop_pct": first["crop_pct"], "checkpoint_sha256": None,
                "weights": "ensemble", "precision": self.precision, "device_type": self.device.type,
                "tf32": self.tf32}


class FunctionTeacher:
    """Any callable ``pixels (uint8 B x 3 x H x W, on ``device``) -> logits (B x C)`` as a teacher.

    ``name`` identifies it in the store header (resume and verify compare it); give a new name
    whenever the function's weights change. Pixels are raw uint8: normalization is the callable's.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], num_classes: int, name: str,
                 input_size: int = 224, device: str = "cpu", precision: str = "fp32"):
        if not callable(fn):
            raise ConfigError(f"a FunctionTeacher needs a callable pixels -> logits (got {type(fn).__name__})")
        s = TeacherSettings(num_classes=num_classes, name=name, input_size=input_size, device=device,
                            precision=precision)
        self.fn, self.name, self._num_classes, self._input_size = fn, s.name, s.num_classes, s.input_size
        self.device, self.tf32 = pick_device(s.device), False
        self.precision = resolve_precision(self.device, s.precision)  # what the store records: never "auto"

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def input_size(self) -> int:
        return self._input_size

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(self.fn(pixels.to(self.device))).float()
        if out.shape != (pixels.shape[0], self.num_classes):
            raise ConfigError(f"teacher function {self.name!r} returned shape {tuple(out.shape)}; expected "
                              f"({pixels.shape[0]}, {self.num_classes})")
        return out

    def topk(self, pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _checked_topk(self, pixels, k)

    def record(self) -> dict:
        return {"name": self.name, "model": f"function:{self.name}", "num_classes": self.num_classes,
                "input_size": self.input_size, "mean": None, "std": None, "interpolation": None, "crop_pct": None,
                "checkpoint_sha256": None, "weights": "function", "precision": self.precision,
                "device_type": self.device.type, "tf32": False}


def build_teacher(names: Sequence[str], checkpoints: Sequence[str] | None = None, weights=None,
                  device: str = "auto", precision: str = "auto", pretrained: bool = True, own_size: bool = False,
                  num_classes: int | None = None, compile: bool | str = False):
    """One timm teacher, or an ensemble of several (``names[i]`` with ``checkpoints[i]``); ``compile``
    compiles every member (a FunctionTeacher's callable is the user's to compile)."""
    names = list(names)
    ckpts = list(checkpoints or [])
    if ckpts and len(ckpts) != len(names):
        raise ConfigError(f"give one {named('teacher_checkpoint')} per {named('teacher')} ({len(names)} teachers, "
                        f"{len(ckpts)} checkpoints)")
    members = [Teacher(n, ckpts[i] if ckpts else None, device=device, precision=precision, pretrained=pretrained,
                       num_classes=num_classes, own_size=own_size and len(names) > 1, compile=compile)
               for i, n in enumerate(names)]
    if len(members) == 1:
        if weights and len(weights) != 1:
            raise ConfigError(f"{named('teacher_weight')} is for ensembles: give one per {named('teacher')}")
        return members[0]
    return EnsembleTeacher(members, weights)


def teacher_identity(record: dict) -> list:
    """What must match for labels to be continued or compared: models, weights, precision."""
    members = record.get("members") or [record]
    return [(m.get("model"), m.get("checkpoint_sha256"), round(float(m.get("weight", 1.0)), 9), m.get("own_size", False))
            for m in members] + [record.get("precision"), record.get("tf32")]


class NonFiniteOutput(UserError):
    """The teacher gave NaN or inf logits: such a view has no true label, so nothing is stored."""

    def __init__(self, rows: list[int], precision: str, where: str = ""):
        self.rows, self.precision = rows, precision
        hint = " (fp16 can overflow: generate with precision fp32 or bf16)" if precision == "fp16" else ""
        super().__init__(f"the teacher's output is not finite (NaN or inf) for {len(rows)} view(s){where}; "
                         f"check the teacher checkpoint{hint}")


def rebuild_teacher(record: dict, checkpoints, device: str = "auto", precision: str = "fp32",
                    compile: bool | str = False):
    """The store's teacher (one model or an ensemble) from its header record and the checkpoints
    the user gives again; notes where a checkpoint is not the one the labels were made with."""
    members = record.get("members") or [record]
    ckpts = [] if checkpoints is None else [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    if any(m.get("weights") == "function" for m in members):
        raise ConfigError("the store's teacher was a Python function: pass it as verify(..., teacher=FunctionTeacher(...))")
    if ckpts and len(ckpts) != len(members):
        raise ConfigError(f"the store's teacher has {len(members)} member(s): give one "
                        f"{named('teacher_checkpoint')} each, in order")
    notes = []
    for i, c in enumerate(ckpts):
        if not os.path.isfile(c):
            raise ConfigError(f"{c}: checkpoint not found")
        want = members[i].get("checkpoint_sha256")
        if want and want != sha256_file(c)[1]:
            notes.append(f"the checkpoint of teacher {i + 1} ({members[i].get('model')}) differs from the one the "
                         f"store was made with")
    missing = [m.get("model") for i, m in enumerate(members) if m.get("checkpoint_sha256") and not ckpts]
    if missing:
        raise ConfigError(f"the store's teacher {', '.join(missing)} was loaded from a checkpoint; pass it with "
                        f"{named('teacher_checkpoint')}")
    teacher = build_teacher([m["model"] for m in members], ckpts or None,
                            [m.get("weight", 1.0) for m in members] if len(members) > 1 else None, device=device,
                            precision=precision, pretrained=not ckpts and members[0].get("weights") != "random",
                            own_size=bool(members[0].get("own_size")), compile=compile,
                            num_classes=int(record["num_classes"]) if record.get("num_classes") else None)
    return teacher, notes
