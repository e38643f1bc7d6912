"""Bench parts on stage one's teacher: ``generate`` (generate against the teacher alone, eager and compiled) and ``precision``."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np


from .common import _backend, _class_map, _jpeg_folder, measure
from .config import BenchConfig


def bench_generate(cfg: BenchConfig, tmp: str) -> dict:
    """Stage one's views/s against the teacher's forward pass alone on the same pixels and batch."""
    import shutil

    import torch

    from relabel.stages.generate import GenerateConfig, generate
    from relabel.teacher import Teacher, start_topk

    folder = _jpeg_folder(Path(tmp) / "gen_images", cfg.gen_images)
    gcfg = GenerateConfig(data=str(folder), out="", teacher=cfg.teacher, views=cfg.gen_views, topk=5,
                          class_map=_class_map(folder, tmp),
                          img_size=cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                          precision=cfg.precision, samples_per_shard=64, views_per_shard=cfg.gen_views,
                          progress=False)
    # Random weights: speed does not depend on them (generate takes the ready teacher object).
    teacher = Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False)
    compiled = None
    if _backend(cfg):  # the same random weights, compiled: forward time is all that differs
        compiled = Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False,
                           compile=_backend(cfg))
        compiled.model.load_state_dict(teacher.model.state_dict())
    total = cfg.gen_images * cfg.gen_views
    pixels = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    runs = [0]

    def full():
        out = os.path.join(tmp, f"gen{runs[0]}")
        runs[0] += 1
        s = generate(GenerateConfig(**{**asdict(gcfg), "out": out}), teacher=teacher)
        shutil.rmtree(out, ignore_errors=True)
        return s.views_written, s.seconds  # the pipeline, not model construction

    def teacher_only(teacher=teacher):  # as generate drives it: pixels on the device, read back one batch late
        on_device, done, pending = pixels.to(teacher.device), 0, None
        while done < total:
            started = start_topk(teacher, on_device, 5)
            if pending is not None:
                pending.result()
            pending = started
            done += cfg.batch_size
        pending.result()
        return done

    contenders = {"generate": full, "teacher_only": teacher_only}
    if compiled is not None:  # measure()'s warm-up call pays the compilation
        contenders["compiled_teacher_only"] = lambda: teacher_only(compiled)
    r = measure(contenders, cfg.repeats)
    out = {"views_per_s": r["generate"]["median"], "teacher_only_views_per_s": r["teacher_only"]["median"],
           "ratio": r["generate"]["median"] / r["teacher_only"]["median"], "detail": r,
           "views_per_run": total, "workers": cfg.workers}
    if compiled is not None:
        out.update(compiled_teacher_only_views_per_s=r["compiled_teacher_only"]["median"],
                   compiled_vs_eager=r["compiled_teacher_only"]["median"] / r["teacher_only"]["median"],
                   compile_backend=_backend(cfg))
        with torch.inference_mode():  # the compiled teacher's labels are the eager one's (verify's check)
            out["compiled_max_logit_diff"] = float((compiled.logits(pixels) - teacher.logits(pixels)).abs().max())
    return out




def bench_precision(cfg: BenchConfig, tmp: str) -> dict:
    """How far reduced-precision teacher outputs are from fp32 on the same views, next to the q8
    rounding (step/2): the evidence behind the GPU default. Not a speed: errors in nats."""
    import torch

    from relabel.storage import open_source
    from relabel.storage.encoding import ValueEncoding

    from relabel.teacher import Teacher, topk_logprobs
    from relabel.views import ViewRenderer, create_recipe, decode_image

    folder = cfg.data or str(_jpeg_folder(Path(tmp) / "prec_images", max(cfg.gen_images, 64)))
    src = open_source(folder)
    teachers = {p: Teacher(cfg.teacher, cfg.teacher_checkpoint, device=cfg.device, precision=p,
                           pretrained=False) for p in ("fp32", "bf16", "fp16")}
    size = cfg.img_size or teachers["fp32"].info.input_size
    r = ViewRenderer(create_recipe("usi"), 0, size)
    n = min(len(src), 256)
    pix = torch.from_numpy(np.stack([r.render(src.keys[i], v, decode_image(src.read(i)))
                                     for i in range(n) for v in range(2)])).permute(0, 3, 1, 2)
    k = min(10, teachers["fp32"].num_classes - 1)
    ref_logits = torch.cat([teachers["fp32"].logits(pix[b:b + cfg.batch_size]).cpu()
                            for b in range(0, len(pix), cfg.batch_size)])
    idx, ref = topk_logprobs(ref_logits, k)
    out = {"views": len(pix), "topk": k, "q8_half_step": ValueEncoding("q8").max_error,
           "weights": "checkpoint" if cfg.teacher_checkpoint else "random"}
    for p in ("bf16", "fp16"):
        t = teachers[p]
        try:
            logits = torch.cat([t.logits(pix[b:b + cfg.batch_size]).cpu() for b in range(0, len(pix), cfg.batch_size)])
        except RuntimeError as e:  # a device without that autocast dtype
            out[f"{p}_error"] = str(e)[:100]
            continue
        lp = torch.log_softmax(logits.float(), -1)
        top = lp.gather(1, idx)
        rest = torch.logsumexp(lp.scatter(1, idx, float("-inf")), 1, keepdim=True)
        err = (torch.cat([top, rest], 1) - ref).abs()
        out[f"{p}_max_err"] = float(err.max())
        out[f"{p}_mean_err"] = float(err.mean())
        out[f"{p}_top1_agree"] = float((lp.argmax(1) == idx[:, 0]).float().mean())
        out[f"{p}_vs_q8"] = out[f"{p}_mean_err"] / out["q8_half_step"]
    return out
