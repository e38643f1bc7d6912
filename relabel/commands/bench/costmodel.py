"""The render cost model ``bench feed`` prints: counted ops per view of each resize kernel, and the views/s
ceilings they imply on GPUs from their published peak rates (a model, not a measurement)."""
from __future__ import annotations

from typing import Callable





# ------------------------------------------------------------------------------------ render cost model
# Published peak rates: TFLOPS / TOPS count a fused multiply-add as 2 operations (so one elementwise
# instruction per lane and clock is half the figure), FP64 "matrix" is the tensor-core rate cuBLAS
# reaches in a float64 matmul (None: no FP64 tensor cores, the vector rate applies). Figures marked
# derived are not on the data sheet: GA10x/AD10x SMs (compute capability 8.6/8.9) run 2 FP64 and 64
# INT32 lanes beside their 128 FP32 lanes (CUDA C++ Programming Guide, arithmetic throughput table),
# so FP64 = FP32/64 and INT32 = FP32/2 there.
_GPUS = (  # name, FP64 vector, FP64 matrix, FP32, INT32 (TFLOPS/TOPS), memory GB/s, source
    ("H200 SXM", 33.5, 66.9, 66.9, 33.5, 4800, "H200 datasheet (4.8 TB/s); compute as H100 SXM (same GH100)"),
    ("H100 SXM", 33.5, 66.9, 66.9, 33.5, 3350, "H100 whitepaper (FP64 33.5/66.9, FP32 66.9, INT32 33.5), datasheet"),
    ("A100 SXM 80GB", 9.7, 19.5, 19.5, 19.5, 2039, "A100 datasheet; INT32 = FP32 (64 INT32 lanes/SM, A100 whitepaper)"),
    ("L40S", 1.43, None, 91.6, 45.8, 864, "L40S datasheet (FP32, GB/s); FP64, INT32 derived"),
    ("L4", 0.47, None, 30.3, 15.1, 300, "L4 datasheet (FP32, GB/s); FP64, INT32 derived"),
    ("A10", 0.49, None, 31.2, 15.6, 600, "A10 datasheet (FP32, GB/s); FP64, INT32 derived"),
    ("RTX 4090", 1.29, None, 82.6, 41.3, 1008, "Ada (AD102) whitepaper (FP32, GB/s); FP64, INT32 derived"),
    ("RTX 3090", 0.56, None, 35.6, 17.8, 936, "Ampere GA102 whitepaper (FP32, GB/s); FP64, INT32 derived"),
)
_COUNTS = ("fp64_matmul_flops", "fp64_ops", "fp32_ops", "int_ops", "bytes_moved", "bytes_gathered", "torch_ops")


def _op_counter():
    """A dispatch mode that tallies what each aten op a render runs does, by ``section``: matmul
    FLOPs (2mnk), elementwise instructions by the precision they run in (float64 if any operand is,
    a conversion to or from float64 included; else float32; else integer), bytes read and written
    (every operand once, a broadcast one by its own size; nothing kept in cache between ops), bytes
    gathered (the output of gathers), and ops (views excluded: they launch nothing)."""
    from collections import Counter

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    aten = torch.ops.aten
    matmuls = {aten.bmm.default, aten.mm.default, aten.addmm.default, aten.baddbmm.default}
    gathers = {aten.gather.default, aten.index_select.default, aten.index.Tensor}
    moves = {aten.copy_.default, aten._to_copy.default, aten.clone.default, aten.cat.default, aten.stack.default,
             aten.flip.default, aten.where.self, aten.index_put_.default, aten._index_put_impl_.default,
             aten.scatter_add_.default, aten.fill_.Scalar, aten.zeros.default, aten.full.default, aten.arange.start,
             aten.arange.default, aten.empty.memory_format, aten.empty_strided.default, aten.zeros_like.default,
             aten.full_like.default, aten.empty_like.default, aten.ones_like.default, aten.zero_.default}

    def own_bytes(t) -> int:
        n = 1
        for size, stride in zip(t.shape, t.stride()):
            n *= size if stride else 1
        return n * t.element_size()

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.section, self.tally = "rest", {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "is_view", False):
                return out
            ins = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            c = self.tally.setdefault(self.section, Counter())
            c["torch_ops"] += 1
            if func in gathers:
                got = sum(t.numel() * t.element_size() for t in outs)
                c["bytes_gathered"] += got
                c["bytes_moved"] += 2 * got + sum(own_bytes(t) for t in ins if t.dtype == torch.int64)
                return out
            c["bytes_moved"] += sum(own_bytes(t) for t in ins + outs)
            f64 = any(t.dtype == torch.float64 for t in ins + outs)
            if func in matmuls:
                a, b = ins[-2], ins[-1]
                c["fp64_matmul_flops" if f64 else "fp32_ops"] += 2 * a.numel() * b.shape[-1]
            elif func not in moves or (f64 and func in (aten._to_copy.default, aten.copy_.default)):
                n = max(t.numel() for t in ins + outs)
                floats = any(t.is_floating_point() for t in ins + outs)
                c["fp64_ops" if f64 else "fp32_ops" if floats else "int_ops"] += n
            return out

    return Count()


def _cost_model(renders: dict[str, Callable[[], None]], n_views: int, img_size: int) -> dict:
    """A model, not a measurement: what each resize kernel's render of the batch does per view
    (``_op_counter``: the resize passes, RandAugment's geometric ops, the rest), and the views/s
    that implies on each GPU of ``_GPUS``: per view the longest of its FP64 time, its FP32 + INT32
    time and its memory time, from the published peaks; kernel launches not included (their count
    is the torch ops row)."""
    from relabel.views import kernels, ops_torch

    per_view: dict[str, dict[str, dict]] = {}
    for name, render in renders.items():
        counter = _op_counter()

        def section(fn, label, counter=counter):
            def wrapped(*a, **kw):
                counter.section = label
                try:
                    return fn(*a, **kw)
                finally:
                    counter.section = "rest"
            return wrapped

        saved = dict(kernels.KERNELS), dict(ops_torch._KERNELS)
        try:  # the registries are data: their entries are wrapped to attribute the ops, then put back
            for k, kern in saved[0].items():
                kernels.KERNELS[k] = kernels.ResizeKernel(k, section(kern.run, "resize"))
            ops_torch._KERNELS["affine"] = section(saved[1]["affine"], "geometric")
            with counter:
                render()
        finally:
            kernels.KERNELS.update(saved[0])
            ops_torch._KERNELS.update(saved[1])
        parts = {s: {k: counter.tally.get(s, {}).get(k, 0) / n_views for k in _COUNTS}
                 for s in ("resize", "geometric", "rest")}
        parts["total"] = {k: sum(parts[s][k] for s in ("resize", "geometric", "rest")) for k in _COUNTS}
        per_view[name] = parts

    def seconds(c: dict, gpu: tuple) -> float:
        _, f64v, f64m, f32, i32, gbs, _ = gpu
        t64 = c["fp64_matmul_flops"] / ((f64m or f64v) * 1e12) + c["fp64_ops"] / (f64v * 1e12 / 2)
        t32 = c["fp32_ops"] / (f32 * 1e12 / 2) + c["int_ops"] / (i32 * 1e12 / 2)
        return max(t64, t32, c["bytes_moved"] / (gbs * 1e9))

    ceilings = {g[0]: {name: 1 / seconds(parts["total"], g) for name, parts in per_view.items()} for g in _GPUS}
    geometric = {g[0]: {name: seconds(parts["geometric"], g) / seconds(parts["total"], g)
                        for name, parts in per_view.items()} for g in _GPUS}
    return {"note": f"a model, not a measurement: counted ops of one {n_views}-view USI batch at {img_size}px",
            "per_view": per_view, "views_per_s_ceiling": ceilings, "geometric_share": geometric,
            "gpus": [dict(zip(("name", "fp64_tflops", "fp64_matrix_tflops", "fp32_tflops", "int32_tops", "mem_gb_s",
                               "source"), g)) for g in _GPUS]}




def _cost_model_markdown(model: dict) -> list[str]:
    """The render cost model as two tables: what a view costs by kernel and part, and the views/s
    ceilings it implies per GPU."""
    g = lambda v: f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"  # noqa: E731
    kernels = list(model["per_view"])
    out = [f"Render cost model per view ({model['note']}):", "",
           "| kernel | part | " + " | ".join(_COUNTS) + " |", "|---|---|" + "---|" * len(_COUNTS)]
    for k in kernels:
        for part, c in model["per_view"][k].items():
            out.append(f"| {k} | {part} | " + " | ".join(g(c[key]) for key in _COUNTS) + " |")
    out += ["", "Implied views/s ceilings (model: max of FP64, FP32+INT32 and memory time per view from published "
            "peaks; launches not included) and the geometric ops' share of each view's modeled time:", "",
            "| GPU | FP64 TFLOPS (matrix) | FP32 TFLOPS | INT32 TOPS | GB/s | "
            + " | ".join(f"{k} views/s" for k in kernels) + " | " + " | ".join(f"geometric share ({k})" for k in kernels)
            + " | source |", "|---|---|---|---|---|" + "---|" * (2 * len(kernels) + 1)]
    for gpu in model["gpus"]:
        name = gpu["name"]
        m = f" ({gpu['fp64_matrix_tflops']:g})" if gpu["fp64_matrix_tflops"] else ""
        out.append(f"| {name} | {gpu['fp64_tflops']:g}{m} | {gpu['fp32_tflops']:g} | {gpu['int32_tops']:g} | "
                   f"{gpu['mem_gb_s']:g} | " + " | ".join(g(model["views_per_s_ceiling"][name][k]) for k in kernels)
                   + " | " + " | ".join(f"{model['geometric_share'][name][k]:.0%}" for k in kernels)
                   + f" | {gpu['source']} |")
    return out
