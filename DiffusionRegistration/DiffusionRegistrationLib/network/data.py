"""Training data for the registration network: pairs from a folder or CSV, random inter-subject pairs,
and synthetic pairs (one image under a random smooth deformation, so the true answer is known).

Every sample is drawn from its own integer seed (`Dataset.sample(seed)`): which pair, which
augmentation, which deformation. The training loop draws the seeds from one saved generator, so data
order and augmentation are reproducible, survive a resume, and do not depend on how many ranks share
the batch. Images are normalised to [0, 1] by percentiles (images.normalize) and resampled onto the
network grid (the fixed image's field of view at the network's size; the moving image is pulled onto
that grid through physical space).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import RegistrationError
from ..geometry.spatial import resample_to, sample
from ..geometry.synthetic import random_smooth_displacement, warp_with_displacement
from ..geometry.transforms import resize_field
from ..io import landmarks
from ..core.image import Grid, Image
from ..io.images import normalize, read_image, read_labels
from ..io.paths import input_file
from .model import NetworkSpec, identity_points, network_grid, normalised_to_mm, warp

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".jpg")
SYNTHETIC_COARSE_SIDE = 32  # random fields are drawn on at most this many voxels per side, then upsampled


@dataclass(frozen=True)
class PairRecord:
    """One training or validation pair; labels and landmarks (CSV of x,y[,z] LPS mm) are optional."""

    fixed: str
    moving: str
    fixed_labels: Optional[str] = None
    moving_labels: Optional[str] = None
    fixed_landmarks: Optional[str] = None
    moving_landmarks: Optional[str] = None


@dataclass
class Augmentation:
    """Light augmentation: a random affine near identity (normalised units) and an intensity gamma."""

    affine: float = 0.05  # largest linear perturbation and translation (fraction of the half field of view)
    gamma: float = 0.2  # log-gamma standard deviation; 0 switches it off

    def affine_grid(self, dim: int, shape: tuple[int, ...], generator: torch.Generator) -> Optional[torch.Tensor]:
        if self.affine <= 0:
            return None
        linear = torch.eye(dim) + self.affine * (2 * torch.rand(dim, dim, generator=generator) - 1)
        shift = self.affine * (2 * torch.rand(dim, generator=generator) - 1)
        points = identity_points(shape)
        return points @ linear.T + shift

    def intensity(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.gamma <= 0:
            return image
        gamma = torch.exp(self.gamma * torch.randn(1, generator=generator))
        return image.clamp(min=0).pow(gamma)


# ---------------------------------------------------------------------------------------------------
# Lists of images and pairs


def _resolve(value: str, base: Path) -> str:
    path = Path(value.strip())
    return str(path if path.is_absolute() else base / path)


def read_csv_rows(path: str | Path, required: tuple[str, ...], text: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of a CSV with a header naming `required` columns: empty and missing cells left out, paths made
    relative to the CSV's folder, except in the `text` columns (kept as written, without surrounding blanks)."""
    path = input_file(path, "CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        raise RegistrationError(f"CSV {path}: is not UTF-8 text (byte {error.start}); save it as UTF-8 (in a "
                                "spreadsheet: CSV UTF-8).") from None
    except csv.Error as error:
        raise RegistrationError(f"CSV {path}: cannot be parsed ({error}); check its quoting.") from None
    columns = set(rows[0]) if rows else set()
    missing = [c for c in required if c not in columns]
    if not rows or missing:
        raise RegistrationError(f"CSV {path}: needs a header with column(s) {', '.join(required)} and at least "
                                f"one row (found columns: {', '.join(sorted(columns)) or 'none'}).")
    base = path.parent
    return [{k: v.strip() if k in text else _resolve(v, base) for k, v in row.items() if k and v and v.strip()}
            for row in rows]


def pairs_from_csv(path: str | Path) -> list[PairRecord]:
    """Rows fixed,moving[,fixed_labels,moving_labels,fixed_landmarks,moving_landmarks]; paths relative to the CSV."""
    fields = PairRecord.__dataclass_fields__
    return [PairRecord(**{k: v for k, v in row.items() if k in fields})
            for row in read_csv_rows(path, ("fixed", "moving"))]


def images_from_csv(path: str | Path) -> list[tuple[str, Optional[str]]]:
    """Rows image[,labels]: a cohort to pair at random (inter-subject)."""
    return [(row["image"], row.get("labels")) for row in read_csv_rows(path, ("image",))]


def images_in_folder(folder: str | Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise RegistrationError(f"training folder {folder}: no such folder.")
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if len(files) < 2:
        raise RegistrationError(f"training folder {folder}: holds {len(files)} image(s); pairs need at least 2 "
                                f"(recognised suffixes: {', '.join(IMAGE_SUFFIXES)}).")
    return files


def folder_pairs(folder: str | Path, mode: str = "all") -> list[PairRecord]:
    """Every ordered pair of distinct images in a folder, or consecutive ones (a time series)."""
    files = images_in_folder(folder)
    if mode == "all":
        return [PairRecord(a, b) for a in files for b in files if a != b]
    if mode == "consecutive":
        return [PairRecord(a, b) for a, b in zip(files[:-1], files[1:])]
    raise RegistrationError(f"folder pairing must be 'all' or 'consecutive', not '{mode}'.")


def landmark_points(path: str, dim: int) -> np.ndarray:
    """Points [N, D] in LPS mm from any landmark file landmarks.py reads (.mrk.json, .fcsv, CSV)."""
    points = landmarks.read_landmarks(path).points
    if points.shape[1] != dim:
        raise RegistrationError(f"landmarks {path}: are {points.shape[1]}D but the images are {dim}D.")
    return points


# ---------------------------------------------------------------------------------------------------
# Datasets


def pull_onto(image: Image, grid: Grid, mode: str = "bilinear") -> torch.Tensor:
    """An image resampled onto `grid` through physical space, [1, *grid.shape] float32 (0 outside)."""
    tensor = torch.as_tensor(np.ascontiguousarray(image.array), dtype=torch.float32)[None, None]
    return resample_to(tensor, image.grid, grid, mode=mode, padding_mode="zeros")[0]


class NetworkDataset:
    """Base class: image cache, network-grid resampling, augmentation, `sample(seed) -> dict`.

    A sample holds fixed and moving [1, *shape] in [0, 1], `to_mm` [D, D] (normalised -> mm on the
    sample's network grid), `spacing` [D] (mm, x, y, z) and, where known, labels [1, *shape] and the true
    normalised fixed->moving displacement `true` [D, *shape].
    """

    def __init__(self, spec: NetworkSpec, augmentation: Optional[Augmentation] = None,
                 percentiles: tuple[float, float] = (0.5, 99.5)):
        self.spec, self.augmentation, self.percentiles = spec, augmentation or Augmentation(0, 0), percentiles
        self._images: dict[str, Image] = {}
        self._labels: dict[str, Image] = {}

    def image(self, path: str) -> Image:
        if path not in self._images:
            image = read_image(path)
            if image.dim != self.spec.dim:
                raise RegistrationError(f"training image {path} is {image.dim}D but the network is "
                                        f"{self.spec.dim}D; use --dim {image.dim} or other images.")
            self._images[path] = normalize(image, *self.percentiles)
        return self._images[path]

    def labels(self, path: str) -> Image:
        if path not in self._labels:
            self._labels[path] = read_labels(path)
        return self._labels[path]

    def sample(self, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _base(self, grid: Grid) -> dict[str, torch.Tensor]:
        return {"to_mm": torch.as_tensor(normalised_to_mm(grid), dtype=torch.float32),
                "spacing": torch.as_tensor(grid.spacing, dtype=torch.float32)}

    def _augmented(self, image: torch.Tensor, labels: Optional[torch.Tensor],
                   generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        points = self.augmentation.affine_grid(self.spec.dim, self.spec.shape, generator)
        if points is not None:
            image = sample(image[None], points)[0]
            if labels is not None:
                labels = sample(labels[None], points, mode="nearest")[0]
        return self.augmentation.intensity(image, generator), labels

    def _pair(self, fixed: str, moving: str, fixed_labels: Optional[str], moving_labels: Optional[str],
              generator: torch.Generator) -> dict[str, torch.Tensor]:
        fixed_image = self.image(fixed)
        grid = network_grid(fixed_image.grid, self.spec.size)
        out = self._base(grid)
        tensors = {}
        for role, path, label_path in (("fixed", fixed, fixed_labels), ("moving", moving, moving_labels)):
            labels = None if label_path is None else pull_onto(self.labels(label_path), grid, mode="nearest")
            tensors[role], tensors[role + "_labels"] = self._augmented(pull_onto(self.image(path), grid), labels,
                                                                        generator)
        out.update({k: v for k, v in tensors.items() if v is not None})
        return out


def _choice(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (1,), generator=generator))


class PairDataset(NetworkDataset):
    """Given pairs (a CSV or a folder), one chosen at random per sample."""

    def __init__(self, records: list[PairRecord], spec: NetworkSpec, augmentation: Optional[Augmentation] = None):
        super().__init__(spec, augmentation)
        if not records:
            raise RegistrationError("training data: the list of pairs is empty.")
        self.records = records

    def sample(self, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        record = self.records[_choice(len(self.records), generator)]
        return self._pair(record.fixed, record.moving, record.fixed_labels, record.moving_labels, generator)


class RandomPairDataset(NetworkDataset):
    """A cohort of images paired at random (inter-subject): two distinct images per sample."""

    def __init__(self, images: list[tuple[str, Optional[str]]], spec: NetworkSpec,
                 augmentation: Optional[Augmentation] = None):
        super().__init__(spec, augmentation)
        if len(images) < 2:
            raise RegistrationError(f"training data: random pairing needs at least 2 images, got {len(images)}.")
        self.images = images

    def sample(self, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        first = _choice(len(self.images), generator)
        second = (first + 1 + _choice(len(self.images) - 1, generator)) % len(self.images)
        (fixed, fixed_labels), (moving, moving_labels) = self.images[first], self.images[second]
        return self._pair(fixed, moving, fixed_labels, moving_labels, generator)


def random_normalised_field(grid: Grid, max_mm: float, smoothness_mm: float, seed: int) -> torch.Tensor:
    """A fold-free random smooth field on `grid` (synthetic.random_smooth_displacement), as a normalised
    channels-first tensor [D, *grid.shape]; drawn on a coarse grid (<= 32 voxels a side) and upsampled."""
    factor = max(max(grid.size) / SYNTHETIC_COARSE_SIDE, 1.0)
    coarse = network_grid(grid, tuple(max(int(round((n - 1) / factor)) + 1, 4) for n in grid.size))
    field_mm = random_smooth_displacement(coarse, max_mm, seed, smoothness_mm=smoothness_mm)
    to_normalised = np.linalg.inv(normalised_to_mm(grid))
    normalised = torch.as_tensor(field_mm @ to_normalised.T, dtype=torch.float32).movedim(-1, 0)[None]
    return resize_field(normalised, grid.shape)[0]


class SyntheticPairDataset(NetworkDataset):
    """One image under a random smooth deformation: fixed(x) = moving(x + u(x)), with u known.

    The moving image is the (augmented) image itself; `true` holds u, normalised.
    """

    def __init__(self, images: list[str], spec: NetworkSpec, max_mm: float = 8.0, smoothness_mm: float = 20.0,
                 augmentation: Optional[Augmentation] = None):
        super().__init__(spec, augmentation)
        if not images:
            raise RegistrationError("synthetic training data: give at least one image.")
        self.images, self.max_mm, self.smoothness_mm = images, max_mm, smoothness_mm

    def sample(self, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        image = self.image(self.images[_choice(len(self.images), generator)])
        grid = network_grid(image.grid, self.spec.size)
        moving, _ = self._augmented(pull_onto(image, grid), None, generator)
        field_seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        true = random_normalised_field(grid, self.max_mm, self.smoothness_mm, field_seed)
        fixed = warp(moving[None], true[None], padding_mode="zeros")[0]
        return {**self._base(grid), "fixed": fixed, "moving": moving, "true": true}


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stacks the keys every sample has."""
    keys = set.intersection(*(set(s) for s in samples))
    return {k: torch.stack([s[k] for s in samples]) for k in sorted(keys)}


# ---------------------------------------------------------------------------------------------------
# Validation cases (native grids, evaluated through inference)


@dataclass
class ValidationCase:
    """A held-out pair on its native grids, with whatever ground truth is known."""

    fixed: Image
    moving: Image
    fixed_labels: Optional[Image] = None
    moving_labels: Optional[Image] = None
    fixed_landmarks: Optional[np.ndarray] = None
    moving_landmarks: Optional[np.ndarray] = None
    true_displacement: Optional[np.ndarray] = None  # [*fixed.shape, D] mm, fixed -> moving
    name: str = ""


def cases_from_records(records: list[PairRecord]) -> list[ValidationCase]:
    cases = []
    for record in records:
        fixed, moving = read_image(record.fixed, "fixed"), read_image(record.moving, "moving")
        cases.append(ValidationCase(
            fixed, moving,
            read_labels(record.fixed_labels) if record.fixed_labels else None,
            read_labels(record.moving_labels) if record.moving_labels else None,
            landmark_points(record.fixed_landmarks, fixed.dim) if record.fixed_landmarks else None,
            landmark_points(record.moving_landmarks, fixed.dim) if record.moving_landmarks else None,
            name=f"{Path(record.fixed).name}<-{Path(record.moving).name}"))
    return cases


def synthetic_cases(images: list[Image], count: int, max_mm: float, seed: int,
                    smoothness_mm: float = 20.0, labels: Optional[list[Optional[Image]]] = None) -> list[ValidationCase]:
    """Held-out synthetic pairs: fixed = moving warped by a known random smooth field (SimpleITK warp)."""
    cases = []
    for k in range(count):
        index = k % len(images)
        moving = images[index]
        true = random_smooth_displacement(moving.grid, max_mm, seed + k, smoothness_mm=smoothness_mm)
        fixed = warp_with_displacement(moving, true)
        moving_labels = labels[index] if labels else None
        fixed_labels = warp_with_displacement(moving_labels, true, "nearest") if moving_labels is not None else None
        cases.append(ValidationCase(fixed, moving, fixed_labels, moving_labels, true_displacement=true.astype(np.float32),
                                    name=f"synthetic{k}"))
    return cases

