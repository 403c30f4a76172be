"""The Python API, one call per task, exported lazily from the package root:

    import DiffusionRegistrationLib as dr
    result = dr.register("fixed.nii.gz", "moving.nii.gz", preset="default", lr=0.5)
    result.save("out")

Images and masks may be file paths, SimpleITK images or the project's `Image`; they are checked as the
command line checks files. Settings resolve exactly as on the command line: the preset, then the keyword
overrides (any RegistrationConfig field).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .engine.options import RegistrationOptions
from .engine.outputs import OutputRequest, register_and_write, write_outputs
from .engine.result import Result
from .errors import RegistrationError
from .core.image import Image
from .io.images import check_image, check_mask, read_image, read_labels
from .progress import ProgressCallback, silent

if TYPE_CHECKING:
    import SimpleITK as sitk

ImageLike = Union[str, "os.PathLike[str]", "sitk.Image", Image]


def _as_image(value: Any, argument: str, read: Callable[[Any], Image], float_pixels: bool = False) -> Image:
    """An Image from a path (through `read`), a SimpleITK image or an Image; TypeError naming `argument`."""
    import SimpleITK as sitk

    if isinstance(value, (str, os.PathLike)):
        return read(value)
    if isinstance(value, sitk.Image):
        components, kind = value.GetNumberOfComponentsPerPixel(), value.GetPixelIDTypeAsString()
        if components != 1 or "complex" in kind.lower():
            raise RegistrationError(f"{argument}: the SimpleITK image has {kind} voxels ({components} components "
                                    "each); registration needs one real value per voxel. Convert it first (colour: "
                                    "a weighted sum of its channels; complex: sitk.ComplexToModulus).")
        if value.GetDimension() not in (2, 3):
            raise RegistrationError(f"{argument}: the SimpleITK image is {value.GetDimension()}D; give a 2D or 3D "
                                    "image (extract one volume of a 4D series first).")
        return Image.from_sitk(sitk.Cast(value, sitk.sitkFloat32) if float_pixels else value)
    if isinstance(value, Image):
        return value
    raise TypeError(f"{argument} must be a file path, a SimpleITK image or a DiffusionRegistrationLib Image, "
                    f"not {type(value).__name__}")


def _image(value: Any, argument: str) -> Image:
    """A checked intensity image (a file is checked as it is read)."""
    image = _as_image(value, argument, lambda path: read_image(path, argument), float_pixels=True)
    if not isinstance(value, (str, os.PathLike)):
        check_image(image, argument)
    return image


def _labels(value: Any, argument: str) -> Image:
    """A label map or mask as stored (type kept, no intensity checks)."""
    return _as_image(value, argument, lambda path: read_labels(path, argument))


def _mask(value: Any, reference: Image, argument: str) -> Optional[Image]:
    """A binary mask on `reference`'s grid, or None."""
    return None if value is None else check_mask(_labels(value, argument), reference, argument)


@dataclass
class Registration:
    """A finished registration: the mapping (`result`) and the images it was computed from."""

    result: Result
    fixed: Image
    moving: Image
    inputs: tuple[str, ...] = ()  # the mask files it read: never removed as an earlier run's outputs by save()

    @property
    def displacement(self):
        """Fixed->moving displacement on the fixed grid, [*shape, D] in LPS mm."""
        return self.result.displacement

    @property
    def warped(self) -> Image:
        """The moving image resampled onto the fixed grid."""
        return self.result.warped if self.result.warped is not None else self.result.warp(self.moving)

    def save(self, folder: Union[str, os.PathLike], **names: Optional[str]) -> dict[str, str]:
        """Writes the command line's output set into `folder` (all or nothing); returns role -> path.

        Keyword arguments rename or drop (None) outputs, e.g. `warped=None`, `inverse="inverse.h5"` (which needs
        `register(..., inverse=True)`). RegistrationError while another process writes into `folder`.
        """
        return write_outputs(self.result, self.fixed, self.moving, folder, OutputRequest(**names), inputs=self.inputs)

    def transform(self) -> "sitk.DisplacementFieldTransform":
        """The fixed->moving mapping as a SimpleITK transform (resample the moving image with it)."""
        from .io.transform_files import displacement_transform

        return displacement_transform(self.result.displacement, self.result.fixed_grid)


def register(fixed: ImageLike, moving: ImageLike, preset: str = "default", fixed_mask: Optional[ImageLike] = None,
             moving_mask: Optional[ImageLike] = None, progress: Optional[ProgressCallback] = None,
             inverse: bool = False, output_dir: Optional[Union[str, os.PathLike]] = None,
             outputs: Optional[dict[str, Optional[str]]] = None, **overrides: Any) -> Registration:
    """Registers `moving` onto `fixed` with a preset and RegistrationConfig overrides (e.g. `lr=0.5`).

    `progress` receives Progress events; `inverse=True` also computes the moving->fixed field. With
    `output_dir`, the command line's output set is written there as by `save(output_dir, **outputs)`, through
    the command line's own path: the names and the folder are checked (and the folder held against a second
    run) before the registration starts.
    """
    from .engine.registration import register as run

    if not isinstance(preset, str):
        raise TypeError(f"preset must be a preset name (str), not {type(preset).__name__}")
    config = RegistrationOptions(preset=preset, overrides=overrides).config()
    fixed_image, moving_image = _image(fixed, "fixed"), _image(moving, "moving")
    masks = (_mask(fixed_mask, fixed_image, "fixed_mask"), _mask(moving_mask, moving_image, "moving_mask"))
    mask_files = tuple(str(m) for m in (fixed_mask, moving_mask) if isinstance(m, (str, os.PathLike)))
    registering = partial(run, fixed_image, moving_image, config, *masks, progress=progress or silent, inverse=inverse)
    if output_dir is None:
        result = registering()
    else:
        result, _ = register_and_write(output_dir, OutputRequest(**(outputs or {})), fixed_image, moving_image,
                                       registering, mask_files)
    return Registration(result, fixed_image, moving_image, mask_files)


def apply(transform: Union[Registration, str, os.PathLike], image: ImageLike,
          reference: Optional[ImageLike] = None, labels: bool = False) -> Image:
    """Resamples a moving-space `image` onto the fixed grid with a registration or a transform file.

    With a transform file, `reference` (the fixed image) gives the output grid. `labels=True`: nearest
    neighbour, type kept.
    """
    from .io.transform_files import read_displacement

    moving = _labels(image, "image") if labels else _image(image, "image")
    if isinstance(transform, Registration):
        mapping = Result(transform.result.fixed_grid, moving.grid, transform.result.displacement)
    elif isinstance(transform, (str, os.PathLike)):
        if reference is None:
            raise TypeError("reference (the fixed image that defines the output grid) is needed with a transform file")
        grid = _image(reference, "reference").grid
        field, _ = read_displacement(transform, grid)
        mapping = Result(grid, moving.grid, field)
    else:
        raise TypeError(f"transform must be a Registration or a transform file path, not {type(transform).__name__}")
    if moving.dim != mapping.fixed_grid.dim:
        raise RegistrationError(f"image {moving.name} is {moving.dim}D but the transform's grid is "
                                f"{mapping.fixed_grid.dim}D; give an image of the registered dimension.")
    return mapping.warp(moving, "nearest" if labels else "linear")


def evaluate(transform: Union[str, os.PathLike], reference: Optional[str] = None,
             fixed_labels: Optional[str] = None, moving_labels: Optional[str] = None,
             fixed_landmarks: Optional[str] = None, moving_landmarks: Optional[str] = None) -> dict[str, Any]:
    """Dice before/after, landmark TRE and folding of a transform file (what `diffreg evaluate` prints)."""
    from .engine.evaluation import evaluate_transform

    return evaluate_transform(str(transform), reference, fixed_labels, moving_labels, fixed_landmarks,
                              moving_landmarks)
