"""The label store's header and shard records: what a store is, written down as data.

``StoreHeader`` is stored as ``attrs["relabel"]`` (storage/FORMAT.md); its ``identity`` is what every
shard's seal names. ``Shard`` is one write unit, ``ShardDamage`` one damaged file of a written shard.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .encoding import ValueEncoding, index_dtype
from .errors import StoreError, named

# 2: per-view-block status, crc32c on `done`, class_map, resolved teacher precision, replay check.
# 3: `seals`, each written shard bound to its store's identity and its place; `renderer`.
# 4: `digests` (each shard records the sha256 of the image bytes it was labelled from), `sample_class`,
#    the fingerprint over each key's class, `key_rule` and `render_rules`.
SCHEMA_VERSION = 4
FORMAT_NAME = "relabel-labels"

# The resize pass-order rules (relabel.views.rules): which Pillow versions resize in which order.
RESIZE_RULES = ("classic", "pillow-12.2", "pillow-13")
# Header fields by the schema that introduced them: an older store's header and identity stay as written.
_SINCE = {"key_rule": 4, "render_rules": 4}

STATUS_PENDING, STATUS_OK, STATUS_UNREADABLE = 0, 1, 2
LABEL_ARRAYS = ("topk_index", "topk_logp")
SEAL_ARRAY = "seals"
DIGEST_ARRAY, CLASS_ARRAY = "digests", "sample_class"
DIGEST_BYTES = 16  # sha256 of a sample's encoded bytes, first 16 bytes (storage/FORMAT.md)
# Header fields that do not change what a label is: the view count grows, the writer, the decode
# environment and the renderer are notes. Everything else is the store's identity.
_NOT_IDENTITY = ("views", "writer", "replay_check", "renderer")


@dataclass
class StoreHeader:
    """Everything needed to interpret (and regenerate) the labels; stored as attrs['relabel']."""

    num_samples: int
    views: int
    topk: int
    num_classes: int
    class_names: list[str]
    fingerprint: str
    teacher: dict
    recipe: dict
    seed: int
    img_size: int
    encoding: ValueEncoding = field(default_factory=ValueEncoding)
    samples_per_shard: int = 16384
    views_per_shard: int = 10
    schema_version: int = SCHEMA_VERSION
    writer: str = ""
    # Dataset class i -> teacher class class_map[i]; None when the teacher's classes are the dataset's.
    # num_classes is always the teacher's: labels, ground truth and evaluation live in its index space.
    class_map: list[int] | None = None
    # Decode environment and hashes of canonical rendered views (relabel.views.replay_check); plain data.
    replay_check: dict = field(default_factory=dict)
    # The renderer that made the store ("pillow" or "torch"; their bytes are equal). A note.
    renderer: str = "pillow"
    # How a copy's sample names became keys (storage.keys): "path", "stem" or "imagenet".
    key_rule: str = "path"
    # What the views' bytes depend on beyond the recipe: {"resize": a RESIZE_RULES name}.
    render_rules: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.encoding, dict):
            self.encoding = ValueEncoding.from_dict(self.encoding)
        if not 1 <= self.topk <= self.num_classes:
            raise StoreError(f"top-k {self.topk} must be between 1 and the number of classes ({self.num_classes})")
        if self.views < 1:
            raise StoreError(f"views must be >= 1 (got {self.views})")
        if self.num_samples < 1:
            raise StoreError("a label store needs at least one sample")
        if self.samples_per_shard < 1 or self.views_per_shard < 1:
            raise StoreError(f"samples_per_shard and views_per_shard must be >= 1 (got {self.samples_per_shard}, "
                            f"{self.views_per_shard})")
        if self.class_map is None:
            if len(self.class_names) != self.num_classes:
                raise StoreError(f"the teacher has {self.num_classes} classes but the dataset has {len(self.class_names)}: "
                                f"their indices mean different things; a store needs the class map (generate's "
                                f"{named('class_map')}) that says which teacher class each dataset class is")
        else:
            self.class_map = [int(c) for c in self.class_map]
            if len(self.class_map) != len(self.class_names):
                raise StoreError(f"class map has {len(self.class_map)} entries for {len(self.class_names)} dataset classes")
            bad = [c for c in self.class_map if not 0 <= c < self.num_classes]
            if bad:
                raise StoreError(f"class map points at teacher class {bad[0]}, outside 0..{self.num_classes - 1}")
            if len(set(self.class_map)) != len(self.class_map):
                raise StoreError("class map sends two dataset classes to the same teacher class")

    @property
    def resize_rule(self) -> str:
        """The resize pass order the views were made with: recorded since schema 4; before, the one
        the store's creating renderer used under the recorded Pillow version: Pillow's own (12.2/12.3's
        100:1 rule included), or for relabel 0.2's torch renderer the classic order below Pillow 13
        (it modelled 13's rule only)."""
        rule = (self.render_rules or {}).get("resize")
        if rule is not None:
            return rule
        native = resize_rule_for_pillow(self._made_under)
        return "classic" if self.renderer == "torch" and native == "pillow-12.2" else native

    @property
    def resize_rule_certain(self) -> bool:
        """False for stores made before render rules were recorded under Pillow 12.2/12.3: there relabel
        0.2's two renderers resized images taller than 100:1 in different orders and a store resumed
        with the other renderer does not say which made each shard (those images' views are unknown)."""
        return bool((self.render_rules or {}).get("resize")) or resize_rule_for_pillow(self._made_under) != "pillow-12.2"

    @property
    def _made_under(self) -> str:
        return ((self.replay_check or {}).get("env") or {}).get("pillow", "")

    def teacher_class(self, dataset_class: np.ndarray) -> np.ndarray:
        """Dataset class indices -> the teacher's index space (where labels and the student live)."""
        dataset_class = np.asarray(dataset_class, np.int64)
        if self.class_map is None:
            return dataset_class
        lut = np.asarray(self.class_map, np.int64)
        return np.where(dataset_class >= 0, lut[np.clip(dataset_class, 0, None)], dataset_class)

    @property
    def index_dtype(self) -> np.dtype:
        return index_dtype(self.num_classes)

    @property
    def identity(self) -> str:
        """sha256 over what decides the labels (teacher, recipe, data, layout; not the view count or
        the device the teacher ran on): two stores share it exactly when their shards are interchangeable."""
        d = self.to_dict()
        for k in _NOT_IDENTITY:
            d.pop(k, None)

        def strip(t: dict) -> dict:
            t = {k: v for k, v in t.items() if k != "device_type"}
            if isinstance(t.get("members"), list):
                t["members"] = [strip(m) if isinstance(m, dict) else m for m in t["members"]]
            return t

        d["teacher"] = strip(dict(d["teacher"]))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def n_sample_blocks(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_shard)

    @property
    def n_view_blocks(self) -> int:
        return math.ceil(self.views / self.views_per_shard)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name, since in _SINCE.items():  # an older store's header is written back as it was
            if self.schema_version < since:
                d.pop(name, None)
        d["encoding"] = self.encoding.to_dict()
        d["format"] = FORMAT_NAME
        d["index_dtype"] = self.index_dtype.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StoreHeader":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resize_rule_for_pillow(version: str) -> str:
    """The resize rule a Pillow version resizes by natively (an unknown or missing version: the
    classic order, which every version before 12.2 used)."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return "classic"
    if major >= 13:
        return "pillow-13"
    if (major, minor) >= (12, 2):
        return "pillow-12.2"
    return "classic"


@dataclass(frozen=True)
class Shard:
    """One write unit: views [v0, v1) x samples [s0, s1); ``done`` views of it already written."""

    vb: int
    sb: int
    v0: int
    v1: int
    s0: int
    s1: int
    done: int

    @property
    def name(self) -> str:
        return f"shard {self.vb}/{self.sb} (views {self.v0}-{self.v1 - 1}, samples {self.s0}-{self.s1 - 1})"


@dataclass(frozen=True)
class ShardDamage:
    """A damaged file of a written shard: recompute the shard (``generate --repair``)."""

    shard: Shard
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"
