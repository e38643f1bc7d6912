"""The dataset card (README.md with YAML front matter) of a published label store.

Deterministic: the same store and options give the same bytes, so republishing does not re-upload it.
"""
from __future__ import annotations

import json

import yaml

from .manifest import MANIFEST_NAME, SHARDS_DIR
from .stats import stats_markdown

SHEET_NAME = "relabel-sheet.png"  # the card's contact sheet, published beside it


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return name
    return "n>1T" if n >= 10 ** 12 else "1B<n<10B"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


# How each key rule (storage/keys.py) matches a user's copy of the images.
_KEY_RULES = {"path": "paths relative to the images' root, without extension",
              "stem": "file names without folders or extension",
              "imagenet": "ImageNet's names and synsets, whatever the copy's layout"}
_COPIES = {
    "path": "Labels are matched to images by key: the path relative to the root without extension (webdataset: "
            "`__key__`), so your copy needs the same layout.",
    "stem": "Labels are matched to images by file name (no folders, no extension): any copy with the same file "
            "names works, as a folder tree, webdataset tars or Hugging Face parquet (`image.path`).",
    "imagenet": "Labels are matched by ImageNet name: any common copy works as it is: the folder tree "
                "(`n01440764/n01440764_10026.JPEG`), timm's webdataset tars (`n01440764_10026`), or Hugging Face "
                "parquet (`ILSVRC/imagenet-1k`, also as `hf://datasets/ILSVRC/imagenet-1k`); classes are matched by "
                "synset.",
}


def _resize_rule(header: dict) -> str:
    from .header import resize_rule_for_pillow

    rule = (header.get("render_rules") or {}).get("resize")
    return rule or resize_rule_for_pillow(((header.get("replay_check") or {}).get("env") or {}).get("pillow", ""))


def dataset_card(header: dict, dest: str, *, license: str = "cc-by-4.0", title: str | None = None,
                 store_bytes: int = 0, unreadable: int = 0, shards_index: dict | None = None,
                 recipe_digest: str | None = None, train_hint: str | None = None, stats: dict | None = None,
                 sheet: str | None = None, sheet_views: tuple[int, int] | None = None) -> str:
    """README.md text for ``dest`` (the URL users pull from). ``stats``: ``relabel info --stats``'s
    result, shown as a table; ``sheet``: the contact sheet's file name beside the card (``sheet_views``:
    its samples and views), so a label set shows what it is."""
    t = header.get("teacher") or {}
    r = header.get("recipe") or {}
    enc = header.get("encoding") or {}
    model = t.get("model") or t.get("name") or "unknown"
    N, V, k, C = (int(header[x]) for x in ("num_samples", "views", "topk", "num_classes"))
    names = list(header.get("class_names") or [])
    title = title or f"Soft labels from {model}: {V} views x {N:,} images, top-{k}"
    tags = ["knowledge-distillation", "soft-labels", "relabel", f"teacher:{model}"]
    meta: dict = {
        "license": license,
        "pretty_name": title,
        "task_categories": ["image-classification"],
        "tags": tags,
        "size_categories": [_size_category(N)],
    }
    if shards_index:
        meta["configs"] = [{"config_name": "default",
                            "data_files": [{"split": "train", "path": f"{SHARDS_DIR}/*.tar"}]}]
    else:
        meta["viewer"] = False  # a zarr store: nothing the dataset viewer can show
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    ckpt = t.get("checkpoint_sha256")
    teacher_src = f"checkpoint sha256 `{ckpt}`" if ckpt else "timm pretrained weights"
    if t.get("members"):  # an ensemble: the average of its members' probabilities
        model = "ensemble"
        teacher_src = "average of the probabilities of " + ", ".join(
            f"`{m.get('model')}` x {float(m.get('weight', 1)):.3g} ("
            + (f"sha256 `{m['checkpoint_sha256'][:16]}`" if m.get("checkpoint_sha256") else "timm pretrained") + ")"
            for m in t["members"])
    if enc.get("name") == "q8":
        enc_s = f"q8 (uint8 codes of -log p on a {enc.get('step')} nat grid)"
    else:
        enc_s = str(enc.get("name"))
    pull_dir = "./labels"
    train = train_hint or (f"relabel train /path/to/your/images --labels {pull_dir} --out runs/student "
                           f"--student resnet50")
    lines = [
        "---", front.rstrip("\n"), "---", "",
        f"# {title}", "",
        "Knowledge-distillation soft labels made with `relabel generate`: the teacher ran once over "
        f"{V} stored, replayable augmentation views of each of the {N:,} images and its top-{k} "
        "log-probabilities (plus the log of the leftover mass) were kept. A student replays the same views "
        "(the views are a pure function of the recipe, the seed, the image key and the view index) and "
        "reads these labels instead of running the teacher.", "",
        "| | |", "|---|---|",
        f"| teacher | `{model}` ({teacher_src}), input {header.get('img_size')} px, "
        f"precision {t.get('precision', 'auto')} |",
        f"| recipe | `{r.get('name')}` version {r.get('version')}"
        + (f", digest `{recipe_digest}`" if recipe_digest else "") + f", seed {header.get('seed')} |",
        f"| views per image | {V} |",
        f"| top-k | {k} of {C} classes (+ leftover-mass bin) |",
        f"| stored values | {enc_s} |",
        f"| images | {N:,}" + (f" ({unreadable} unreadable, no labels)" if unreadable else "") + " |",
        f"| source-dataset fingerprint | `{header.get('fingerprint')}` |",
        f"| key rule | `{header.get('key_rule', 'path')}` ({_KEY_RULES.get(header.get('key_rule', 'path'), '')}) |",
        f"| render rule | resize `{_resize_rule(header)}`: replays byte for byte on any Pillow 10.4 to 13.0 |",
        f"| label store | {_human(store_bytes)} (zarr v3, schema {header.get('schema_version')}) |",
    ]
    if shards_index:
        lines.append(f"| webdataset shards | {len(shards_index['shards'])} in `{SHARDS_DIR}/`"
                     + (" (with images)" if shards_index.get("images") else " (labels only)") + " |")
    if sheet or stats:
        lines += ["", "## What the labels look like", ""]
    if sheet:
        n, v = sheet_views or (0, 0)
        lines += [f"![{n} random images x {v} stored views, each as the student replays it, with the teacher's top-3 "
                  f"and the rest mass]({sheet})", "",
                  f"{n} random images (rows) x {v} stored views (columns), each tile the exact pixels a student "
                  "replays; under it the target (a mixed view: both images' classes and their shares), the teacher's "
                  "top-3 and the rest (`relabel show`).", ""]
    if stats:
        lines += [stats_markdown(stats), "", "What the numbers mean (`relabel info --stats`):", ""]
        lines += [f"- *{name.replace('_', ' ')}*: {text}" for name, text in stats["definitions"].items()]
    lines += [
        "", "## Train with it", "",
        "```bash",
        "pip install relabel",
        f"relabel pull {dest} {pull_dir}            # every file, sha256-checked against manifest.json",
        f"relabel pull {dest} {pull_dir} --views {max(1, V // 2)}  # or only views 0-{max(1, V // 2) - 1} (fewer files)",
        train,
        "```", "",
        "You need your own copy of the images the labels were made from. " + _COPIES.get(
            header.get("key_rule", "path"), _COPIES["path"]) + " relabel compares the fingerprint above (the "
        "keys, their classes and the class names) and says which keys are missing"
        + (", and checks every image's bytes against the digest of the bytes it was labelled from"
           if int(header.get("schema_version", 0)) >= 4 else "")
        + ". See `relabel train --help` for the student, schedule and loss options.", "",
        "## Files", "",
        "- the label store at the root: `zarr.json`, `topk_index/`, `topk_logp/`, `status/`, `done/`, `keys/` "
        "(zarr v3, sharded). In Python: `relabel.storage.LabelStore.open(\"<this location>\")` reads it in place "
        "(local folder or fsspec URL).",
        f"- `{MANIFEST_NAME}`: size and sha256 of every file; `relabel pull` checks them.",
    ]
    if sheet:
        lines.append(f"- `{sheet}`: the contact sheet above (not part of the labels).")
    if shards_index:
        lines.append(f"- `{SHARDS_DIR}/`: webdataset tar shards, one `<key>.labels.npy` per sample holding all "
                     "its views" + (" plus `<key>.image` (the image file's bytes) and `<key>.cls`"
                                    if shards_index.get("images") else "")
                     + " (`index.json` documents the layout; `relabel.storage.exported.iter_exported_samples` "
                     "decodes them).")
    lines += [
        "", "## Recipe", "", "```json", json.dumps(r, indent=1, sort_keys=True), "```", "",
        "## Teacher", "", "```json", json.dumps(t, indent=1, sort_keys=True), "```", "",
        f"Class names ({len(names)}): " + ", ".join(f"`{c}`" for c in names[:50]) + (" ..." if len(names) > 50 else ""),
        "",
    ]
    if header.get("class_map"):
        lines += [f"The teacher has {C} classes; `class_map` in the header gives each dataset class its teacher "
                  "class index (labels, ground truth and evaluation use the teacher's index space).", ""]
    return "\n".join(lines)
