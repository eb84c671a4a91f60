"""Set-CLIP's data step: batches with a fixed share of known pairs, the rest from separate image and text pools.

A `paired_fraction` of the dataset keeps its pairs; the remaining items form an unpaired pool from which images and
captions are drawn by two independent permutations, so an unpaired row's caption belongs to some other image and
no pairing information leaks. Each batch ("block") of `batch_size` rows holds `round(pair_share * batch_size)`
pairs first, then unpaired rows; `paired_mask` marks the pairs. A SimCLR-style augmented copy of every image gives
the second view for the image NT-Xent term. Everything is drawn from `(seed, epoch)`, so a run is reproducible.

Use with the HF Trainer: `train_dataset=PairedUnpairedDataset(rows, ...)` over the rows `data.load_split` returns,
with `per_device_train_batch_size` equal to its `batch_size`, `data_collator=SetCLIPCollator(caption_collator)` and
`remove_unused_columns=False`. Captions are drawn by the usual `CaptionCollator`, from the text item's captions.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from PIL import Image, ImageEnhance
from torch.utils.data import IterableDataset, get_worker_info

from smartclip_train.collator import CaptionCollator
from smartclip_data.sources import IMAGE, load_image


@dataclass(frozen=True)
class SimCLRAugment:
    """SimCLR's view augmentation with PIL: random resized crop (area share in `[min_scale, 1]`, aspect ratio in
    `ratio`) back to the input size, horizontal flip, colour jitter of strength s (brightness, contrast and
    saturation factors in `[1 - 0.8s, 1 + 0.8s]`, hue shift in `[-0.2s, 0.2s]` turns, applied in random order with
    probability `jitter_p`) and grayscale. The defaults are torchvision's SimCLR recipe as Set-CLIP released it,
    minus the Gaussian blur (meaningless at 32x32 and absent from SimCLR's CIFAR recipe).

    Colour, flip and crop change what the built-in scenes' captions describe ("red", "left"), so the image term
    learns invariance to them; lower `strength`, `flip_p` and raise `min_scale` there.
    """

    min_scale: float = 0.08
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    strength: float = 1.0
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

    def __post_init__(self):
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"SimCLRAugment: min_scale must be in (0, 1], got {self.min_scale}.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"SimCLRAugment: ratio must be (low, high) with 0 < low <= high, got {self.ratio}.")
        if self.strength < 0:
            raise ValueError(f"SimCLRAugment: strength must be >= 0, got {self.strength}.")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SimCLRAugment: {name} must be a probability in [0, 1], got {getattr(self, name)}.")

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        # torchvision's RandomResizedCrop: ten tries at a random area and log-uniform aspect ratio, else the whole image
        for _ in range(10):
            area = width * height * rng.uniform(self.min_scale, 1.0)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        return 0, 0, width, height

    def _jitter(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        spread, hue = 0.8 * self.strength, min(0.2 * self.strength, 0.5)
        for op in rng.permutation(4):
            if op == 0:
                image = ImageEnhance.Brightness(image).enhance(rng.uniform(max(0.0, 1 - spread), 1 + spread))
            elif op == 1:
                image = ImageEnhance.Contrast(image).enhance(rng.uniform(max(0.0, 1 - spread), 1 + spread))
            elif op == 2:
                image = ImageEnhance.Color(image).enhance(rng.uniform(max(0.0, 1 - spread), 1 + spread))
            elif hue > 0:
                shift = round(rng.uniform(-hue, hue) * 256)  # hue is an angle: 256 steps make a full turn
                h, s, v = image.convert("HSV").split()
                image = Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), s, v)).convert("RGB")
        return image

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """A new augmented view of `image` (any mode; returned as RGB at the input's size)."""
        image = image.convert("RGB")
        size = image.size
        image = image.resize(size, Image.Resampling.BILINEAR, box=self._crop_box(*size, rng))
        if rng.uniform() < self.flip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.uniform() < self.jitter_p:
            image = self._jitter(image, rng)
        if rng.uniform() < self.grayscale_p:
            image = image.convert("L").convert("RGB")
        return image


def _draws(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` items of `pool`, as consecutive fresh permutations (every item once before any repeats)."""
    rounds = math.ceil(count / len(pool)) if count else 0
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)] or [pool[:0]])[:count]


class PairedUnpairedDataset(IterableDataset):
    """Yields the examples of Set-CLIP batches, one block of `batch_size` rows at a time.

    Args:
        dataset: a `datasets.Dataset` with an `image` column (anything `data.load_image` reads) and caption columns
            (`long_caption`, `short_captions`, as `data.load_split` makes them).
        batch_size: rows per block; the DataLoader's batch size must equal it (`SetCLIPCollator` checks).
        paired_fraction: share of `dataset` whose pairs are known (chosen at random from `seed`); the rest is the
            unpaired pool.
        pair_share: share of each block filled with pairs, when both pools are non-empty (at least one row of
            each). With no unpaired pool (or `unpaired=False`) every row is a pair; with no pairs, none is.
        augment: builds `"image_aug"`, the second image view, for every row; `None` leaves it out.
        unpaired: `False` ignores the unpaired pool (the "pairs only" baseline on the same split).
        seed: fixes the split and, with the epoch (`set_epoch`), every draw.

    An epoch is one pass over the unpaired pool (pairs repeat as needed), or one pass over the pairs when there is
    no unpaired pool. An example is the text item's caption columns, the image item's decoded `image`, `paired`,
    `block` and `block_size`, plus `image_aug`.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        paired_fraction: float = 1.0,
        pair_share: float = 1 / 3,
        augment: SimCLRAugment | None = None,
        unpaired: bool = True,
        seed: int = 0,
    ):
        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"PairedUnpairedDataset needs a map-style datasets.Dataset to draw from, got {type(dataset).__name__} "
                "(a streamed source cannot be split into paired and unpaired pools)."
            )
        if IMAGE not in dataset.column_names or len(dataset.column_names) < 2:
            raise ValueError(
                f"PairedUnpairedDataset: expected an {IMAGE!r} column and caption columns, got {dataset.column_names}."
            )
        if batch_size < 2:
            raise ValueError(f"PairedUnpairedDataset: batch_size must be >= 2 (SDD needs two items), got {batch_size}.")
        if not 0 <= paired_fraction <= 1 or not 0 <= pair_share <= 1:
            raise ValueError(
                f"PairedUnpairedDataset: paired_fraction and pair_share must be in [0, 1], got {paired_fraction} "
                f"and {pair_share}."
            )
        order = np.random.default_rng(seed).permutation(len(dataset))
        num_paired = round(paired_fraction * len(dataset))
        self.paired, self.unpaired = order[:num_paired], (order[num_paired:] if unpaired else order[:0])

        if len(self.unpaired) == 0:
            self.pairs_per_block = batch_size
        elif len(self.paired) == 0:
            self.pairs_per_block = 0
        else:
            self.pairs_per_block = min(max(round(pair_share * batch_size), 1), batch_size - 1)
        unpaired_per_block = batch_size - self.pairs_per_block
        if unpaired_per_block:
            self.num_blocks = math.ceil(len(self.unpaired) / unpaired_per_block)
        else:
            self.num_blocks = len(self.paired) // batch_size
        if self.num_blocks == 0:
            raise ValueError(
                f"PairedUnpairedDataset: {len(self.paired)} pairs and no unpaired pool cannot fill one batch of "
                f"{batch_size}; lower batch_size or raise paired_fraction."
            )

        self.images = dataset.select_columns([IMAGE])
        self.texts = dataset.remove_columns([IMAGE])  # an unpaired row's captions come from another item
        self.batch_size, self.augment, self.seed, self.epoch = batch_size, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) at every epoch, so each epoch draws new blocks."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_blocks * self.batch_size

    def __iter__(self):
        seeds = np.random.SeedSequence([self.seed, self.epoch]).spawn(3 + self.num_blocks)
        n, s = self.num_blocks, self.pairs_per_block
        u = self.batch_size - s
        pairs = _draws(self.paired, n * s, np.random.default_rng(seeds[0])).reshape(n, s)  # (blocks, s)
        images = _draws(self.unpaired, n * u, np.random.default_rng(seeds[1])).reshape(n, u)  # (blocks, u)
        texts = _draws(self.unpaired, n * u, np.random.default_rng(seeds[2])).reshape(n, u)  # independent of images

        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for block in range(first, self.num_blocks, step):  # DataLoader workers share out whole blocks
            rng = np.random.default_rng(seeds[3 + block])
            rows = [(i, i, True) for i in pairs[block]] + list(zip(images[block], texts[block], [False] * u))
            for image_index, text_index, paired in rows:
                image = load_image(self.images[int(image_index)][IMAGE])
                example = {
                    **self.texts[int(text_index)], IMAGE: image, "paired": paired, "block": block,
                    "block_size": self.batch_size,
                }
                if self.augment is not None:
                    example["image_aug"] = self.augment(image, rng)
                yield example


class SetCLIPCollator:
    """Turns one block of `PairedUnpairedDataset` examples into `caption_collator`'s batch plus `paired_mask` `(B,)`
    bool and, when the examples carry a second view, `pixel_values_aug` `(B, 3, H, W)`.

    Ordinary rows (no `block` key, e.g. an evaluation split) make a batch of known pairs.
    """

    def __init__(self, caption_collator: CaptionCollator):
        self.caption_collator = caption_collator

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "block" not in examples[0]:
            return {**self.caption_collator(examples), "paired_mask": torch.ones(len(examples), dtype=torch.bool)}
        blocks = {example["block"] for example in examples}
        if len(blocks) != 1 or len(examples) != examples[0]["block_size"]:
            raise ValueError(
                f"SetCLIPCollator: a batch must be exactly one block of {examples[0]['block_size']} rows, got "
                f"{len(examples)} rows from blocks {sorted(blocks)}; set the DataLoader's (per-device) batch size to "
                "the PairedUnpairedDataset's batch_size."
            )
        batch = self.caption_collator(examples)
        batch["paired_mask"] = torch.tensor([e["paired"] for e in examples], dtype=torch.bool)
        if "image_aug" in examples[0]:
            image_processor = self.caption_collator.processor.image_processor
            views = image_processor(images=[e["image_aug"] for e in examples], return_tensors="pt")
            batch["pixel_values_aug"] = views["pixel_values"]
        return batch


__all__ = ["PairedUnpairedDataset", "SetCLIPCollator", "SimCLRAugment"]
