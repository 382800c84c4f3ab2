"""Large images: decoded by DataLoader workers with the usual ImageNet crops (Pillow only)."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from .readers import decode_image


class StreamingFolder(torch.utils.data.Dataset):
    """Files of an image folder, cropped to ``size``: random-resized-crop + flip to train, resize + centre-crop to test.

    The crop of item i in epoch e depends only on (seed, e, i), so a resumed run sees the same crops.
    """

    def __init__(self, files: list[Path], labels: np.ndarray, classes: list[str], size: int, train: bool):
        self.files, self.labels, self.classes = files, torch.from_numpy(labels), classes
        self.size, self.train = size, train
        self.seed, self.epoch = 0, 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return 3, self.size, self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        img = Image.fromarray(decode_image(self.files[i]))
        if self.train:
            rng = random.Random(hash((self.seed, self.epoch, i)))
            img = self._random_resized_crop(img, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            short = round(self.size / 0.875)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()), self.labels[i]

    def _random_resized_crop(self, img, rng: random.Random):
        from PIL import Image

        w, h = img.size
        for _ in range(10):
            area = w * h * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
                box = (left, top, left + cw, top + ch)
                return img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
