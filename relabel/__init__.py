"""relabel: run the distillation teacher once over replayable views, train any student from the
cached soft labels.

The public API is what ``__all__`` lists; everything else is internal and may change. Names load on
first use, so ``import relabel`` (and the CLI's ``--help``) does not import torch.

Example (your own loop)::

    import relabel
    labels = relabel.open_labels("labels.zarr")          # or exported tars, local or s3://, hf://
    loader = relabel.ReplayLoader("/data/train", labels, batch_size=128, normalize_for=model)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for b in loader:
            logits = model(b["input"])
            loss = relabel.kd_loss(logits, b["topk_index"], b["topk_logp"]).mean()
"""
from __future__ import annotations

import importlib
import sys

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    # labels on disk
    "open_labels": "relabel.storage.labels",
    "LabelStore": "relabel.storage.store",
    "StoreHeader": "relabel.storage.store",
    "open_source": "relabel.storage.sources",
    # stage one
    "GenerateConfig": "relabel.stages.generate",
    "GenerateResult": "relabel.stages.generate",
    "VerifyReport": "relabel.stages.verify",
    "Teacher": "relabel.teacher",
    "EnsembleTeacher": "relabel.teacher",
    "FunctionTeacher": "relabel.teacher",
    "build_teacher": "relabel.teacher",
    # views
    "create_recipe": "relabel.views",
    "Recipe": "relabel.views",
    "ViewRenderer": "relabel.views",
    "view_params": "relabel.views",
    # stage two
    "ReplayLoader": "relabel.train.replay",
    "kd_loss": "relabel.train.losses",
    "mixed_ce": "relabel.train.losses",
    "TrainConfig": "relabel.train.loop",
    "TrainResult": "relabel.train.loop",
    "CachedDistillationTask": "relabel.train.timm_task",
    # seeing the labels
    "show": "relabel.stages.show",
    "ShowConfig": "relabel.stages.show_config",
    "label_stats": "relabel.stages.stats",
    "plot_stats": "relabel.stages.stats",
    "StatsConfig": "relabel.stages.show_config",
    # errors
    "RelabelError": "relabel.errors",
    "ConfigError": "relabel.errors",
    "SourceError": "relabel.errors",
    "StoreError": "relabel.errors",
    "UserError": "relabel.errors",
}

# Stage functions whose module has the same name (``relabel.generate`` is still importable as a module,
# below, and importing it would replace a function of that name on this package) are exported under
# names of their own.
_RENAMED = {"generate_labels": ("relabel.stages.generate", "generate"), "verify_labels": ("relabel.stages.verify", "verify"),
            "train_student": ("relabel.train.loop", "train")}


__all__ = sorted([*_EXPORTS, *_RENAMED]) + ["__version__"]


# Modules that moved (stage one's to relabel.stages, the view helpers to relabel.views): their old
# paths still import, as the same module objects, so code written against them keeps working.
_MOVED = {f"relabel.{m}": f"relabel.stages.{m}" for m in ("generate", "generate_config", "verify", "verify_config",
                                                          "publish")}
_MOVED.update({f"relabel.{m}": f"relabel.views.{m}" for m in ("randaug", "replay_check")})


class _MovedModules:
    """A meta-path finder that answers an old module path with the module at its new one."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname not in _MOVED:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _MovedModules)

    @staticmethod
    def create_module(spec):
        return importlib.import_module(_MOVED[spec.name])

    @staticmethod
    def exec_module(module):
        pass


if not any(getattr(f, "__name__", "") == "_MovedModules" for f in sys.meta_path):
    sys.meta_path.append(_MovedModules)


def __getattr__(name: str):
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relabel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
