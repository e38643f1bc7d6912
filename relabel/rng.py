"""Counter-based random numbers for the view path.

Every draw is a pure function of the inputs that name it (recipe digest, seed, key, view, ...):
the inputs are hashed into a Philox4x64 key and the raw 64-bit outputs are turned into numbers
by our own code. Nothing reads or advances global RNG state, so the same view gets the same
parameters in any process, worker, batch order or machine, and across numpy versions
(Philox's raw stream is fixed by its definition; numpy's distribution samplers are not).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

_INV_2_53 = 1.0 / (1 << 53)


def derive_key(*parts: object) -> int:
    """A 128-bit integer naming a stream: a hash of the parts' reprs, unambiguous by construction."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        b = repr(p).encode()
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return int.from_bytes(h.digest(), "little")


class CounterRNG:
    """A short deterministic stream of numbers named by ``parts``.

    >>> CounterRNG("usi", 0, "cls/img", 3).random() == CounterRNG("usi", 0, "cls/img", 3).random()
    True
    """

    __slots__ = ("_bits", "_pos", "_gen")

    _BLOCK = 32

    def __init__(self, *parts: object):
        self._gen = np.random.Philox(key=derive_key(*parts))
        self._bits = self._gen.random_raw(self._BLOCK)
        self._pos = 0

    def _next(self) -> int:
        if self._pos == len(self._bits):
            self._bits = self._gen.random_raw(self._BLOCK)
            self._pos = 0
        x = int(self._bits[self._pos])
        self._pos += 1
        return x

    def random(self) -> float:
        """Uniform in [0, 1) with 53 bits."""
        return (self._next() >> 11) * _INV_2_53

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def randint(self, n: int) -> int:
        """Uniform integer in [0, n), without modulo bias worth noting for n << 2**64."""
        if n <= 0:
            raise ValueError("randint needs n > 0")
        return (self._next() * n) >> 64

    def normal(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        # Box-Muller; 1 - u keeps the log argument in (0, 1].
        u1, u2 = self.random(), self.random()
        return mu + sigma * math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)

    def gamma(self, shape: float) -> float:
        """Marsaglia-Tsang; shape < 1 via the boost gamma(a) = gamma(a + 1) * U**(1/a)."""
        if shape <= 0:
            raise ValueError("gamma needs shape > 0")
        if shape < 1.0:
            return self.gamma(shape + 1.0) * (1.0 - self.random()) ** (1.0 / shape)
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = (1.0 + c * x) ** 3
            if v <= 0:
                continue
            u = 1.0 - self.random()
            if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
                return d * v

    def beta(self, a: float, b: float) -> float:
        x = self.gamma(a)
        y = self.gamma(b)
        return x / (x + y)

    def permutation(self, n: int) -> list[int]:
        """Fisher-Yates with this stream."""
        p = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.randint(i + 1)
            p[i], p[j] = p[j], p[i]
        return p
