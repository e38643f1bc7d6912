"""`relabel bench` runs every part in a tiny configuration and writes every key (numbers not asserted)."""
from __future__ import annotations

import json

from conftest import run_cli

KEYS = {
    "step": ("supervised_img_s", "cached_img_s", "online_img_s", "compiled_cached_img_s"),
    "loader": ("cached_img_s", "supervised_img_s", "view_img_s", "timm_transform_img_s"),
    "labels": ("epoch_views_per_s", "random_views_per_s"),
    "generate": ("views_per_s", "teacher_only_views_per_s", "compiled_teacher_only_views_per_s"),
    "size": ("bytes_per_view_k5", "bytes_per_view_k10", "bytes_per_view_k20", "kl_loss_k10", "kl_full_k10",
             "bytes_per_view_k10_correlated", "kl_loss_k10_correlated", "bytes_per_view_k10_correlated_mixed",
             "bytes_per_view_k10_correlated_best_codec"),
    "scale": ("views", "views_per_s", "peak_rss_mib"),
    "feed": ("stage1_views_per_s_per_worker", "stage2_img_per_s_per_worker", "stage1_scaling", "stage2_scaling",
             "torch_finish_ms_per_batch_matmul", "torch_finish_ms_per_batch_taps", "torch_finish_ops_per_view_taps"),
    "sweep": ("cached_hours", "online_hours", "online_vs_cached", "break_even_student_epochs"),
}


def test_bench_all_tiny(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "all", "--student", "test_resnet", "--teacher", "test_resnet", "--batch-size", "8",
                "--img-size", "32", "--repeats", "1", "--steps", "1", "--workers", "0", "--label-views", "20000",
                "--scale-views", "20000", "--gen-images", "8", "--gen-views", "2", "--feed-images", "8",
                "--feed-views", "2", "--compile-backend", "aot_eager", "--json", out)  # dynamo, no inductor codegen
    res = json.loads(out.read_text())
    for part, keys in KEYS.items():
        for key in keys:
            assert isinstance(res[part][key], (int, float)) and res[part][key] > 0, (part, key)
    assert res["scale"]["views"] == 20000 and res["labels"]["store_views"] == 20000
    assert res["generate"]["compiled_max_logit_diff"] < 1e-3  # compiled and eager teachers agree
    sw = res["sweep"]  # the arithmetic: stage one once, then the cheap step, against the teacher in every step
    assert abs(sw["cached_hours"] * 3600 - sw["views"] * sw["images"] * sw["s_per_view_generate"]
               - sw["students"] * sw["epochs"] * sw["images"] * sw["s_per_img_cached_step"]) < 1e-6 * sw["cached_hours"] * 3600
    table = out.with_suffix(".md").read_text()
    assert "| step | cached_vs_online |" in table and "| size | bytes_per_view_k10 |" in table
    assert "| feed | stage1_views_per_s_per_worker |" in table and "| sweep | online_vs_cached |" in table
    assert res["feed"]["torch_render_kernel_auto"] in ("matmul", "taps") and "| feed | torch_render_kernel_auto |" in table
    model = res["feed"]["cost_model"]  # a model: counted per view, ceilings from the GPU table
    assert model["note"].startswith("a model, not a measurement") and "Render cost model per view" in table
    per_view = model["per_view"]
    assert per_view["matmul"]["resize"]["fp64_matmul_flops"] > 0 == per_view["taps"]["total"]["fp64_matmul_flops"]
    assert {"H100 SXM", "RTX 4090", "L4"} <= set(model["views_per_s_ceiling"])
    assert "| labels | epoch_views_per_s |" in r.stdout


def test_bench_bad_part():
    r = run_cli("bench", "nope", check=False)
    assert r.returncode == 2 and "unknown bench part" in r.stderr and len(r.stderr.strip().splitlines()) == 1
