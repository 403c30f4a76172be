"""One-slice volumes (scouts, localizers, single slices) as 2D images in their own plane, and back.

Slicer volumes are 3D; the backend registers a one-slice volume in 2D. Its readers keep the in-plane part
of the direction only when the slice axis is the last one and the plane is axial, so a coronal or
sagittal slice would come back placed as if axial. Here the job writes both one-slice inputs as 2D images
in the fixed slice's own frame (u along its first in-plane index axis, v along the second, origin at its
first voxel) and maps the 2D result back: a displacement (du, dv) is du*u + dv*v in world coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.image import Grid, Image
from ..errors import RegistrationError

PLANE_TOLERANCE = 1e-3  # cosine of the angle between an axis and the plane's normal that counts as in-plane


@dataclass(frozen=True)
class Plane:
    """The frame of a one-slice 3D grid: the singleton array axis, the in-plane unit axes and the origin (LPS)."""

    axis: int  # the array axis (z, y, x order) of size 1
    u: np.ndarray
    v: np.ndarray
    origin: np.ndarray
    thickness: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.u, self.v)


def plane_of(grid: Grid) -> Plane | None:
    """The plane of a 3D grid with exactly one index axis of one voxel, else None."""
    if grid.dim != 3 or sum(n == 1 for n in grid.size) != 1:
        return None
    thin = grid.size.index(1)  # index axis (x, y, z order)
    u_axis, v_axis = (a for a in range(3) if a != thin)
    columns = grid.direction_matrix
    return Plane(axis=2 - thin, u=columns[:, u_axis], v=columns[:, v_axis], origin=np.asarray(grid.origin, float),
                 thickness=float(grid.spacing[thin]))


def in_plane(image: Image, plane: Plane, role: str) -> Image:
    """The one-slice `image` as a 2D image in `plane`'s frame; RegistrationError (naming `role`, e.g.
    "moving volume 'scout'") when it lies elsewhere."""
    own = plane_of(image.grid)
    if own is None:
        raise RegistrationError(f"{role}: is a {'x'.join(map(str, image.grid.size))} volume and the "
                                "fixed volume is one slice. Register a slice onto a slice: select a one-slice "
                                "moving volume, or a 3D fixed volume.")
    columns = image.grid.direction_matrix
    thin = image.grid.size.index(1)
    axes = [a for a in range(3) if a != thin]
    offset = np.asarray(image.grid.origin, float) - plane.origin
    if any(abs(columns[:, a] @ plane.normal) > PLANE_TOLERANCE for a in axes) \
            or abs(offset @ plane.normal) > max(plane.thickness, own.thickness) / 2:
        raise RegistrationError(f"{role}: is one slice that does not lie in the fixed slice's plane. "
                                "A one-slice pair is registered in its plane; select slices of the same plane "
                                "(or reformat one onto the other).")
    direction = np.array([[columns[:, a] @ plane.u for a in axes], [columns[:, a] @ plane.v for a in axes]])
    grid = Grid(tuple(image.grid.size[a] for a in axes), tuple(image.grid.spacing[a] for a in axes),
                (float(offset @ plane.u), float(offset @ plane.v)), tuple(direction.ravel()))
    return Image(np.squeeze(image.array, axis=own.axis), grid, image.path)


def field_to_world(displacement: np.ndarray, plane: Plane) -> np.ndarray:
    """A displacement [*shape2, 2 or 3] in the plane's (u, v) coordinates as LPS [*shape3, 3] on the 3D grid."""
    world = displacement[..., :1] * plane.u + displacement[..., 1:2] * plane.v
    return np.expand_dims(world, plane.axis).astype(np.float32)
