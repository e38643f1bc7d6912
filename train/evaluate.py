"""Validation like timm's eval transform: resize the shorter side to img_size / crop_pct (bicubic),
center-crop img_size. Workers hand over uint8 tensors; normalization happens on the device."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from relabel.models import autocast
from relabel.views import INTERPOLATIONS, decode_image
from relabel.storage import SourceError, open_source
from relabel.storage.sources import ImageSource

class EvalDataset(Dataset):
    """Index -> (uint8 CHW center crop, class index)."""

    def __init__(self, source: ImageSource, img_size: int, crop_pct: float, interpolation: str = "bicubic",
                 indices: list[int] | None = None, targets: np.ndarray | None = None):
        self.source, self.img_size = source, img_size
        self.targets = targets  # source class index -> the label compared with the model's output
        self.scale = math.floor(img_size / crop_pct)
        self.interp = INTERPOLATIONS.get(interpolation, Image.Resampling.BICUBIC)
        self.indices = list(range(len(source))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        img = decode_image(self.source.read(j))
        w, h = img.size
        s = self.scale  # torchvision Resize(int): shorter side -> s, aspect kept
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        img = img.resize((nw, nh), self.interp)
        t = self.img_size
        top, left = int(round((nh - t) / 2.0)), int(round((nw - t) / 2.0))
        img = img.crop((left, top, left + t, top + t))  # pads with black if the crop is larger
        arr = np.asarray(img, dtype=np.uint8)
        y = int(self.source.labels[j])
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), y if self.targets is None else int(self.targets[y])


def eval_loader(path: str, class_names: list[str], img_size: int, crop_pct: float, batch_size: int,
                workers: int, rank: int = 0, world: int = 1, pin_memory: bool = False,
                class_map: np.ndarray | None = None) -> DataLoader:
    """This rank's share of the validation set; its classes must be the label store's.

    With a class map (dataset class -> teacher class), labels are mapped by class name into the
    teacher's index space, where the student predicts: val folder name -> the store's dataset class
    -> teacher class. A val class the store does not know is an error, never a silent miss.
    """
    source = open_source(path)
    targets = None
    if class_map is not None:
        where = {n: i for i, n in enumerate(class_names)}
        unknown = [n for n in source.class_names if n not in where]
        if unknown:
            raise SourceError(f"{path}: validation class(es) {', '.join(unknown[:5])} are not in the store's class map "
                              f"({len(class_names)} classes); validate on the labelled classes only")
        targets = np.asarray([class_map[where[n]] for n in source.class_names], np.int64)
    elif list(source.class_names) != list(class_names):
        diff = sorted(set(source.class_names) ^ set(class_names))[:5]
        raise SourceError(f"{path}: validation classes differ from the label store's ({len(source.class_names)} vs "
                          f"{len(class_names)} classes{'; e.g. ' + ', '.join(diff) if diff else ', other order'})")
    ds = EvalDataset(source, img_size, crop_pct, indices=list(range(rank, len(source), world)), targets=targets)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, normalize: torch.nn.Module, device: torch.device,
             precision: str = "fp32") -> tuple[int, int, int]:
    """(top-1 correct, top-5 correct, count) on this rank's share; the caller reduces over ranks."""
    was_training = model.training
    model.eval()
    c1 = c5 = n = 0
    for x, y in loader:
        x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=-1).indices
        hit = top == y[:, None]
        c1 += int(hit[:, 0].sum())
        c5 += int(hit.any(-1).sum())
        n += len(y)
    model.train(was_training)
    return c1, c5, n
