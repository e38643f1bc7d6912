"""How top-k log-probabilities are stored.

A view's soft label is k+1 log-probabilities under the full softmax (T=1): the teacher's top-k
classes and one "rest" bin holding the log of the leftover mass. Decoding and renormalizing over
those k+1 bins gives back the exact top-k distribution and leftover mass up to the encoding's
rounding; ``q8`` rounds -log p to a grid of ``step`` nats (uint8), so each value is off by at most
step/2; the KL to the exact distribution is about step**2 / 24 (~1.6e-4 nats) on average and
~4.9e-4 at worst.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError

ENCODINGS = ("q8", "f16", "f32")


@dataclass(frozen=True)
class ValueEncoding:
    name: str = "q8"
    step: float = 1.0 / 16.0

    def __post_init__(self):
        if self.name not in ENCODINGS:
            raise ConfigError(f"unknown value encoding {self.name!r}; choose one of {', '.join(ENCODINGS)}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({"q8": np.uint8, "f16": np.float16, "f32": np.float32}[self.name])

    @property
    def floor(self) -> float:
        """Log-probabilities below this are stored as this (probabilities under ~1e-7 or 1e-14).

        q8: 255 steps. f16: -32, the last binade where half an ulp is 2^-7 nats, so ``max_error``
        holds for every stored value (below it the f16 grid coarsens to 2^-6 and worse)."""
        return {"q8": -255 * self.step, "f16": -32.0, "f32": -np.inf}[self.name]

    @property
    def max_error(self) -> float:
        """Largest per-value error in nats for values at or above ``floor``."""
        return {"q8": self.step / 2, "f16": 2.0 ** -7, "f32": 1e-6}[self.name]

    def encode(self, logp: np.ndarray) -> np.ndarray:
        logp = np.asarray(logp)
        if np.isnan(logp).any() or np.isposinf(logp).any():
            raise ValueError("log-probabilities must not be NaN or +inf: such a value has no true label")
        if self.name == "q8":
            return np.clip(np.rint(-logp.astype(np.float64) / self.step), 0, 255).astype(np.uint8)
        return np.maximum(logp, self.floor).astype(self.dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        if self.name == "q8":
            return stored.astype(np.float32) * np.float32(-self.step)
        return stored.astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ValueEncoding":
        return cls(name=d["name"], step=float(d.get("step", 1.0 / 16.0)))


def index_dtype(num_classes: int) -> np.dtype:
    """Smallest unsigned type that holds every class index."""
    if num_classes <= 1 << 8:
        return np.dtype(np.uint8)
    if num_classes <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)
