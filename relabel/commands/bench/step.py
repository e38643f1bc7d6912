"""Bench parts on stage two: the train ``step`` (cached, online, supervised; eager and compiled) and the ``loader``."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path



from .common import _backend, _class_map, _jpeg_folder, measure
from .config import BenchConfig


# ------------------------------------------------------------------------------------ step / loader
def _train_store(cfg: BenchConfig, tmp: str) -> tuple[str, str]:
    """Real images and a real label store (random-weight teacher) for stage-two timing."""
    from relabel.stages.generate import GenerateConfig, generate
    from relabel.teacher import Teacher

    folder = os.path.join(tmp, "train_images")
    store = os.path.join(tmp, "train_labels")
    if not os.path.isdir(store):
        _jpeg_folder(Path(folder), max(2 * cfg.batch_size, 64))
        generate(GenerateConfig(data=folder, out=store, teacher=cfg.teacher, views=1, topk=10, img_size=cfg.img_size,
                                class_map=_class_map(Path(folder), tmp),
                                batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                                precision=cfg.precision, samples_per_shard=1024, progress=False),
                 teacher=Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False))
    return folder, store


def _train_cfg(cfg: BenchConfig, tmp: str, mode: str, workers: int = 0):
    from relabel.train.loop import TrainConfig

    folder, store = _train_store(cfg, tmp)
    return TrainConfig(data=folder, labels=store, out=os.path.join(tmp, f"run-{mode}"), student=cfg.student, mode=mode,
                       epochs=10, batch_size=cfg.batch_size, img_size=cfg.img_size, device=cfg.device,
                       workers=workers, progress=False, log=False, warmup_epochs=0)


def trainer_with_batches(cfg, batches: int = 1, epoch: int = 0):
    """A stage-two ``Trainer`` for ``cfg`` (a TrainConfig) with ``epoch`` begun (its labels loaded) and
    that epoch's first ``batches`` batches: ``trainer.train_step(batch)`` timed without the DataLoader."""
    from relabel.train.loop import build, make_loader

    data, tr = build(cfg)
    loader = make_loader(data, cfg, tr.device)
    loader.set_epoch(epoch)
    tr.begin_epoch(epoch, len(loader))
    it = iter(loader)
    return tr, [b for _, b in zip(range(batches), it)]


def bench_step(cfg: BenchConfig, tmp: str) -> dict:
    """Train-step img/s of one student: supervised, cached-KD (lookup + target build), online-KD."""
    import torch

    def step(tr, batch):
        for _ in range(cfg.steps):
            loss = tr.train_step(batch)
        loss.item()  # wait for the device
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        return cfg.steps * len(batch["positions"])

    steps = {}
    for mode in ("supervised", "cached", "online"):
        tr, (batch,) = trainer_with_batches(_train_cfg(cfg, tmp, mode), batches=1)
        steps[mode] = lambda tr=tr, batch=batch: step(tr, batch)
    if _backend(cfg):  # the cached step with the student compiled (the warm-up pays the compilation)
        tr, (batch,) = trainer_with_batches(replace(_train_cfg(cfg, tmp, "cached"), compile=_backend(cfg)), batches=1)
        steps["compiled_cached"] = lambda tr=tr, batch=batch: step(tr, batch)
    r = measure(steps, cfg.repeats)
    out = {f"{m}_img_s": r[m]["median"] for m in steps}
    out.update(cached_vs_supervised=out["cached_img_s"] / out["supervised_img_s"],
               cached_vs_online=out["cached_img_s"] / out["online_img_s"], detail=r)
    if "compiled_cached_img_s" in out:
        out.update(compiled_vs_eager_cached=out["compiled_cached_img_s"] / out["cached_img_s"],
                   compile_backend=_backend(cfg))
    return out


def bench_loader(cfg: BenchConfig, tmp: str) -> dict:
    """Data loading alone (decode + replay + mix, and for cached the epoch's label gather)."""
    import torch

    from relabel.train.loop import build, make_loader

    contenders = {}
    for mode in ("supervised", "cached"):
        tcfg = _train_cfg(cfg, tmp, mode, workers=cfg.workers)
        data, tr = build(tcfg)
        loader = make_loader(data, tcfg, torch.device("cpu"))  # cached: it gathers the epoch's labels too
        epoch = [0]

        def run(data=data, loader=loader, epoch=epoch, epochs=12):
            n = 0
            for _ in range(epochs):  # long enough to time: the data set is small
                loader.set_epoch(epoch[0] % data.header.views)
                epoch[0] += 1
                n += sum(len(batch["positions"]) for batch in loader)
            return n

        contenders[mode] = run
    r = measure(contenders, cfg.repeats)
    out = {"cached_img_s": r["cached"]["median"], "supervised_img_s": r["supervised"]["median"],
           "ratio": r["cached"]["median"] / r["supervised"]["median"], "workers": cfg.workers, "detail": r}
    out.update(_view_vs_timm(cfg, data))
    return out


def _view_vs_timm(cfg: BenchConfig, data) -> dict:
    """A view's pixels from a decoded image (ours, uint8) against timm's own training transform
    (RandomResizedCrop + flip + RandAugment + ToTensor + Normalize) on the same decoded images."""
    from timm.data import create_transform

    from relabel.views import RECIPES, ViewRenderer, decode_image

    images = [decode_image(data.source.read(i)) for i in range(min(32, len(data.source)))]
    renderer = ViewRenderer(RECIPES["usi"], 0, cfg.img_size)
    timm_tf = create_transform(cfg.img_size, is_training=True, auto_augment=RECIPES["usi"].randaugment,
                               interpolation="bicubic", re_prob=0.0)
    calls = [0]

    rounds = 8  # RandAugment's op mix varies per call: average over many views

    def ours():
        for _ in range(rounds):
            calls[0] += 1
            for i, img in enumerate(images):
                renderer.render(f"k{i}", calls[0], img)
        return rounds * len(images)

    def timm_transform():
        for _ in range(rounds):
            for img in images:
                timm_tf(img)
        return rounds * len(images)

    r = measure({"view": ours, "timm": timm_transform}, cfg.repeats)
    return {"view_img_s": r["view"]["median"], "timm_transform_img_s": r["timm"]["median"],
            "view_vs_timm": r["view"]["median"] / r["timm"]["median"]}
