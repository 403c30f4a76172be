"""Transforms written by the project, read back by SimpleITK as the independent reader."""
import time

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.core.image import Grid, Image
from DiffusionRegistrationLib.engine.result import Result
from DiffusionRegistrationLib.geometry.spatial import physical_points
from DiffusionRegistrationLib.io.transform_files import read_displacement, write_affine, write_displacement

ANGLE = np.deg2rad(20)
OBLIQUE = (np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)
GRID = Grid((14, 12, 10), (1.5, 1.0, 2.5), (10.0, -20.0, 5.0), OBLIQUE)
LINEAR = np.array([[0.02, -0.03, 0.01], [0.015, 0.01, -0.02], [-0.01, 0.02, 0.03]])
OFFSET = np.array([1.5, -2.0, 0.7])


def known_mapping(points: np.ndarray) -> np.ndarray:
    """x -> x + L x + t: linear, so trilinear interpolation of its field is exact everywhere."""
    return points + points @ LINEAR.T + OFFSET


def known_field(grid: Grid) -> np.ndarray:
    points = physical_points(grid).numpy()[0].astype(np.float64)
    return (known_mapping(points) - points).astype(np.float32)


@pytest.mark.parametrize("name", ["t.h5", "t.nii.gz", "t.mha"])
def test_written_field_maps_points_like_the_known_mapping(tmp_path, name):
    write_displacement(known_field(GRID), GRID, tmp_path / name)
    if name.endswith(".h5"):
        transform = sitk.ReadTransform(str(tmp_path / name))
    else:
        transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / name), sitk.sitkVectorFloat64))
    rng = np.random.default_rng(1)
    index = rng.uniform(1, np.array(GRID.size) - 2, size=(50, 3))
    points = (GRID.index_to_physical() @ np.c_[index, np.ones(50)].T).T[:, :3]
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in points])
    assert np.abs(mapped - known_mapping(points)).max() < 1e-3
    assert not list(tmp_path.glob(".diffreg-*"))


def test_read_back_on_another_grid_samples_the_same_mapping(tmp_path):
    write_displacement(known_field(GRID), GRID, tmp_path / "t.h5")
    inner = Grid((6, 5, 4), (2.0, 2.0, 2.0), tuple(GRID.index_to_physical()[:3] @ [3, 3, 3, 1]), OBLIQUE)
    field, grid = read_displacement(tmp_path / "t.h5", inner)
    assert grid == inner
    assert np.abs(field - known_field(inner)).max() < 1e-3


def test_affine_tfm_maps_points_like_the_matrix(tmp_path):
    matrix = np.eye(4)
    matrix[:3, :3] += LINEAR
    matrix[:3, 3] = OFFSET
    write_affine(matrix, tmp_path / "a.tfm")
    transform = sitk.ReadTransform(str(tmp_path / "a.tfm"))
    point = np.array([12.0, -7.0, 30.0])
    assert np.allclose(transform.TransformPoint(tuple(float(v) for v in point)), known_mapping(point[None])[0], atol=1e-6)


def test_simpleitk_resampling_with_the_written_transform_gives_our_warped_image(tmp_path):
    rng = np.random.default_rng(0)
    moving_grid = Grid((20, 18, 16), (1.2, 1.1, 1.6), (8.0, -22.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    smooth = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.random(moving_grid.shape)), 2.0)
    moving = Image(sitk.GetArrayFromImage(smooth).astype(np.float32), moving_grid)
    result = Result(GRID, moving_grid, known_field(GRID))
    ours = result.warp(moving).array
    write_displacement(result.displacement, GRID, tmp_path / "t.h5")
    reference = GRID.apply_to(sitk.Image(list(GRID.size), sitk.sitkFloat32))
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), reference, sitk.ReadTransform(
        str(tmp_path / "t.h5")), sitk.sitkLinear, 0.0))
    mapped = result.points().numpy()[0].reshape(-1, 3)
    index = (moving_grid.physical_to_index() @ np.c_[mapped, np.ones(len(mapped))].T).T[:, :3]
    inside = np.all((index > 0.5) & (index < np.array(moving_grid.size) - 1.5), axis=1).reshape(GRID.shape)
    assert inside.mean() > 0.3
    assert np.abs(ours - theirs)[inside].max() < 1e-4 * np.abs(moving.array).max() + 1e-5


def test_unknown_transform_format_is_refused_and_leaves_nothing(tmp_path):
    from DiffusionRegistrationLib.errors import RegistrationError

    with pytest.raises(RegistrationError, match="unknown transform format"):
        write_displacement(known_field(GRID), GRID, tmp_path / "t.xyz")
    assert list(tmp_path.iterdir()) == []


def test_overlapping_hidden_itk_messages_in_threads_give_stderr_back():
    """Writers hide ITK's messages in several threads at once; whatever the order they leave in, stderr
    must end up where it was (a thread restoring another's null device silenced every later error)."""
    import os
    import threading

    from DiffusionRegistrationLib.io.images import itk_messages_hidden

    before = os.fstat(2)
    first_in, first_may_leave = threading.Event(), threading.Event()
    seen: list[bool] = []

    def first():
        with itk_messages_hidden():
            first_in.set()
            first_may_leave.wait(5)

    def second():
        first_in.wait(5)
        with itk_messages_hidden():
            seen.append(os.path.samestat(os.fstat(2), os.stat(os.devnull)))
            first_may_leave.set()
            time.sleep(0.05)  # the first thread leaves while this one is still inside
            seen.append(os.path.samestat(os.fstat(2), os.stat(os.devnull)))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [True, True]
    after = os.fstat(2)
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)
