"""Peer registration methods run on one pair of image files, reported the project's way.

Each peer returns the fixed->moving displacement field on the fixed grid ([*fixed.shape, 3], LPS mm,
(x, y, z) components, as synthetic.py's fields), its wall time (the registration call alone), and a
sanity number: the mean absolute difference between the peer's own warped moving image and the moving
image resampled with the returned field, relative to the mean intensity. A field with the wrong
direction or axis order gives a large value; a correct one gives interpolation noise only.

Peers: ANTsPy SyN with its defaults (Mattes MI), ANTsPy SyN with the CC metric (radius 4), itk-elastix
affine (or rigid: "elastix-rigid") then B-spline (elastix's default maps, 10 mm final grid spacing), and
Greedy (picsl-greedy) with its tutorial's settings, without and with a moving mask ("greedy-mask"),
NiftyReg's reg_aladin then reg_f3d with their defaults, and FireANTs' Quickstart on the CPU (NiftyReg and
FireANTs from benchmarks/install_peers.sh).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

from DiffusionRegistrationLib.core.image import Grid, Image
from DiffusionRegistrationLib.core.paths import cache_folder
from DiffusionRegistrationLib.geometry.spatial import physical_points
from DiffusionRegistrationLib.io.images import read_image, write_image
from DiffusionRegistrationLib.io.landmarks import ras_to_lps
from DiffusionRegistrationLib.geometry.synthetic import warp_with_displacement
from peak_memory import run_child

HERE = Path(__file__).resolve().parent


@dataclass
class PeerResult:
    name: str
    displacement: np.ndarray  # [*fixed.shape, 3] float64, fixed->moving, LPS mm
    seconds: float  # wall time of the registration call
    cpu_seconds: float  # CPU time of this process (all threads) during the call
    consistency: float  # relative mean |peer's warped - moving resampled with `displacement`|
    settings: str
    peak_mb: Optional[float] = None  # a peer run in a process of its own: that process's peak


def field_on_grid(transform: sitk.Transform, grid: Grid) -> np.ndarray:
    """Samples any SimpleITK transform (fixed->moving points) as a displacement field on `grid`."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, list(grid.size),
                                              list(grid.origin), list(grid.spacing), list(grid.direction))
    return sitk.GetArrayFromImage(field)


def displacement_on_grid(vector: sitk.Image, grid: Grid) -> np.ndarray:
    """A peer's displacement image (fixed->moving, LPS mm) as an array on `grid`: as it is where it lies on
    `grid`, else resampled onto it as a transform."""
    if Grid.from_sitk(vector).same_as(grid):
        return sitk.GetArrayFromImage(vector)
    return field_on_grid(sitk.DisplacementFieldTransform(vector), grid)


def consistency(moving: Image, field: np.ndarray, fixed_grid: Grid, peer_warped: np.ndarray) -> float:
    """How far the peer's warped image is from resampling `moving` with `field` (relative, interior)."""
    ours = warp_with_displacement(moving, field, "linear", grid=fixed_grid).array.astype(np.float64)
    theirs = np.asarray(peer_warped, dtype=np.float64)
    interior = tuple(slice(2, -2) for _ in range(fixed_grid.dim))
    scale = max(float(np.abs(theirs[interior]).mean()), 1e-12)
    return float(np.abs(ours[interior] - theirs[interior]).mean() / scale)


def _ants(fixed_path: str, moving_path: str, name: str, settings: str, **options) -> PeerResult:
    import ants

    fixed, moving = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
    fixed_image, moving_image = read_image(fixed_path), read_image(moving_path)
    with tempfile.TemporaryDirectory(prefix="diffreg-ants-") as folder:
        start, cpu = time.perf_counter(), time.process_time()
        out = ants.registration(fixed, moving, outprefix=str(Path(folder) / "reg_"), **options)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # a fixed point goes through ANTs' list first to last (x -> affine(warp(x))); a SimpleITK
        # composite applies the transform added last first, so add them in reverse
        composite = sitk.CompositeTransform(fixed_image.dim)
        for path in reversed(out["fwdtransforms"]):
            if path.endswith(".mat"):
                composite.AddTransform(sitk.ReadTransform(path))
            else:
                warp = sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)
                composite.AddTransform(sitk.DisplacementFieldTransform(warp))
        field = field_on_grid(composite, fixed_image.grid)
        warped_path = str(Path(folder) / "warped.nii.gz")
        ants.image_write(out["warpedmovout"], warped_path)
        peer_warped = sitk.GetArrayFromImage(sitk.ReadImage(warped_path))
    return PeerResult(name, field, seconds, cpu, consistency(moving_image, field, fixed_image.grid, peer_warped),
                      settings)


def ants_syn(fixed_path: str, moving_path: str) -> PeerResult:
    """ANTsPy `registration(type_of_transform="SyN")` with every default (affine + SyN, Mattes MI)."""
    return _ants(fixed_path, moving_path, "ants-syn", 'ants.registration(type_of_transform="SyN")',
                 type_of_transform="SyN")


def ants_syn_cc(fixed_path: str, moving_path: str, radius: int = 4) -> PeerResult:
    """ANTsPy SyN with the CC metric of neighbourhood `radius`; otherwise SyN's defaults.

    `syn_sampling` is the metric's parameter: histogram bins for MI, the window radius for CC. Its
    default, 32, is meant as bins; as a CC radius it ran for over 13 minutes on one 2 mm pair here,
    so the usual CC radius 4 (as in ANTsPy's "SyNCC") is used.
    """
    return _ants(fixed_path, moving_path, "ants-syn-cc",
                 f'ants.registration(type_of_transform="SyN", syn_metric="CC", syn_sampling={radius})',
                 type_of_transform="SyN", syn_metric="CC", syn_sampling=radius)


def elastix_bspline(fixed_path: str, moving_path: str, grid_spacing_mm: float = 10.0,
                    initial: str = "affine") -> PeerResult:
    """itk-elastix: the default `initial` map ("affine" or "rigid"), then the default B-spline map with a
    `grid_spacing_mm` final grid.

    With a skull in the fixed image only, the MI affine stage scales the brain towards the head
    (measured: TRE 2.6-5.4 mm on the skull pairs after affine + B-spline, 1.0 mm after rigid + B-spline).
    """
    import itk

    fixed = itk.imread(str(fixed_path), itk.F)
    moving = itk.imread(str(moving_path), itk.F)
    fixed_image, moving_image = read_image(fixed_path), read_image(moving_path)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap(initial))
    bspline = parameters.GetDefaultParameterMap("bspline", 4, grid_spacing_mm)
    bspline["FinalBSplineInterpolationOrder"] = ["1"]  # only the result image: linear, as in `consistency`
    parameters.AddParameterMap(bspline)
    register = itk.elastix_registration_method  # itk loads modules lazily: not inside the timing
    start, cpu = time.perf_counter(), time.process_time()
    warped, transform = register(fixed, moving, parameter_object=parameters, log_to_console=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with tempfile.TemporaryDirectory(prefix="diffreg-transformix-") as folder, contextlib.chdir(folder):
        deformation = itk.transformix_deformation_field(moving, transform)  # also writes a file into cwd
    vector = sitk.GetImageFromArray(np.asarray(itk.array_from_image(deformation), dtype=np.float64),
                                    isVector=True)
    vector.SetOrigin(tuple(deformation.GetOrigin()))
    vector.SetSpacing(tuple(deformation.GetSpacing()))
    vector.SetDirection(tuple(np.asarray(deformation.GetDirection()).ravel()))
    grid = fixed_image.grid
    field = displacement_on_grid(vector, grid)  # transformix may report another grid than the fixed one
    peer_warped = itk.array_from_image(warped)
    name = "elastix" if initial == "affine" else f"elastix-{initial}"
    return PeerResult(name, field, seconds, cpu, consistency(moving_image, field, grid, peer_warped),
                      f"elastix default {initial} + bspline maps, FinalGridSpacingInPhysicalUnits {grid_spacing_mm:g}")


# Greedy's tutorial (greedy.readthedocs.io, "Greedy tutorial"): affine, then deformable from it. {r} is the
# NCC window radius per axis (2: a 5x5x5 window).
GREEDY_AFFINE = "-a -dof 12 -m NCC {r} -ia-image-centers -n 100x50x10"
GREEDY_DEFORMABLE = "-m NCC {r} -n 100x50x10 -s 2.0vox 0.5vox"


def greedy(fixed_path: str, moving_path: str, moving_mask: bool = False) -> PeerResult:
    """Greedy's tutorial settings, run as its user runs them: `seconds` is the whole process (start-up,
    reading, affine and deformable registration, writing the matrix and the warp; greedy_process.py).

    `moving_mask`: the similarity only where the moving image is non-zero (`-mm`, both stages), the way
    to register a skull-stripped moving image onto a fixed image with skull. The mask file is an input,
    written before the timing. The field is Greedy's own composition of its warp and affine (`-rc`).
    """
    from picsl_greedy import Greedy2D, Greedy3D

    fixed_image, moving_image = read_image(fixed_path), read_image(moving_path)
    dim = fixed_image.dim
    radius = "x".join(["2"] * dim)
    with tempfile.TemporaryDirectory(prefix="diffreg-greedy-") as name:
        folder = Path(name)
        inputs = f"-i {fixed_path} {moving_path}"
        if moving_mask:
            write_image(moving_image.with_array((moving_image.array != 0).astype(np.uint8)), folder / "mask.nii.gz")
            inputs += f" -mm {folder / 'mask.nii.gz'}"
        affine, warp = folder / "affine.mat", folder / "warp.nii.gz"
        commands = [f"{inputs} {GREEDY_AFFINE.format(r=radius)} -o {affine}",
                    f"{inputs} -it {affine} {GREEDY_DEFORMABLE.format(r=radius)} -o {warp}"]
        memory = folder / "peak.json"
        seconds, cpu, code = run_child([sys.executable, str(HERE / "peak_memory.py"), str(memory),
                                        str(HERE / "greedy_process.py"), str(dim), *commands], folder / "log.txt")
        if code != 0:
            raise RuntimeError(f"greedy exited with {code}:\n{(folder / 'log.txt').read_text()[-3000:]}")
        composed, warped = folder / "composed.nii.gz", folder / "warped.nii.gz"
        (Greedy3D() if dim == 3 else Greedy2D()).execute(
            f"-d {dim} -rf {fixed_path} -rm {moving_path} {warped} -r {warp} {affine} -rc {composed}")
        field = sitk.GetArrayFromImage(sitk.ReadImage(str(composed), sitk.sitkVectorFloat64))
        peer_warped = sitk.GetArrayFromImage(sitk.ReadImage(str(warped)))
        peak = json.loads(memory.read_text())["peak_mb"]
    settings = " then ".join(commands).replace(str(folder) + "/", "")
    return PeerResult("greedy-mask" if moving_mask else "greedy", field, seconds, cpu,
                      consistency(moving_image, field, fixed_image.grid, peer_warped), settings, peak)


def peer_program(name: str) -> str:
    """The path of a peer's program: the peers cache's bin/ (benchmarks/install_peers.sh), else the PATH."""
    installed = cache_folder("peers", "DIFFREG_PEERS") / "bin" / name
    found = str(installed) if os.access(installed, os.X_OK) else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found in {installed.parent} nor on the PATH: run "
                           "`bash benchmarks/install_peers.sh`.")
    return found


def niftyreg_field(path: Path, grid: Grid) -> np.ndarray:
    """A NiftyReg deformation field (reg_transform -def: for each fixed voxel, where it maps to in world RAS mm;
    NIfTI shape [x, y, z, 1, 3]) as the fixed->moving displacement [z, y, x, 3] in LPS mm on `grid`."""
    import nibabel

    mapped = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float64)[:, :, :, 0, :].transpose(2, 1, 0, 3)
    mapped = ras_to_lps(mapped.reshape(-1, 3)).reshape(mapped.shape)
    return mapped - physical_points(grid, dtype=torch.float64)[0].numpy()


def niftyreg(fixed_path: str, moving_path: str) -> PeerResult:
    """NiftyReg as its user runs it by default: `reg_aladin` (rigid then affine, block matching), then `reg_f3d`
    (cubic B-spline, NMI, bending energy) from that affine. `seconds` is both processes (niftyreg_process.py);
    the field is reg_f3d's control point grid, which includes the affine, as a deformation (reg_transform -def),
    checked against reg_resample's linear resampling with it (reg_f3d's own result image is cubic)."""
    fixed_image, moving_image = read_image(fixed_path), read_image(moving_path)
    if fixed_image.dim != 3:
        raise RuntimeError("the niftyreg peer takes 3D images")
    aladin, f3d, transform, resample = (peer_program(n) for n in ("reg_aladin", "reg_f3d", "reg_transform",
                                                                   "reg_resample"))
    with tempfile.TemporaryDirectory(prefix="diffreg-niftyreg-") as name:
        folder = Path(name)
        affine, cpp = folder / "affine.txt", folder / "cpp.nii.gz"
        commands = [[aladin, "-ref", fixed_path, "-flo", moving_path, "-aff", str(affine),
                     "-res", str(folder / "affine_result.nii.gz")],
                    [f3d, "-ref", fixed_path, "-flo", moving_path, "-aff", str(affine), "-cpp", str(cpp),
                     "-res", str(folder / "result.nii.gz")]]
        memory = folder / "peak.json"
        seconds, cpu, code = run_child([sys.executable, str(HERE / "niftyreg_process.py"), str(memory),
                                        *(json.dumps(c) for c in commands)], folder / "log.txt")
        if code != 0:
            raise RuntimeError(f"niftyreg exited with {code}:\n{(folder / 'log.txt').read_text()[-3000:]}")
        deformation, warped = folder / "deformation.nii.gz", folder / "warped.nii.gz"
        for command in ([transform, "-ref", fixed_path, "-def", str(cpp), str(deformation)],
                        [resample, "-ref", fixed_path, "-flo", moving_path, "-trans", str(cpp), "-res", str(warped),
                         "-inter", "1"]):
            if run_child(command, folder / "convert.txt")[2] != 0:
                raise RuntimeError(f"{Path(command[0]).name} exited with an error:\n"
                                   f"{(folder / 'convert.txt').read_text()[-3000:]}")
        field = niftyreg_field(deformation, fixed_image.grid)
        peer_warped = sitk.GetArrayFromImage(sitk.ReadImage(str(warped)))
        peak = json.loads(memory.read_text())["peak_mb"]
    settings = "reg_aladin -ref fixed -flo moving, then reg_f3d -ref fixed -flo moving -aff <its affine> (defaults)"
    return PeerResult("niftyreg", field, seconds, cpu, consistency(moving_image, field, fixed_image.grid, peer_warped),
                      settings, peak)


def fireants(fixed_path: str, moving_path: str) -> PeerResult:
    """FireANTs' Quickstart (affine, then greedy deformable) on the CPU, in its own environment, as its user runs
    it: `seconds` is the whole process (fireants_process.py); the field is FireANTs' own ANTs-format warp."""
    fixed_image, moving_image = read_image(fixed_path), read_image(moving_path)
    python = peer_program("fireants-python")
    with tempfile.TemporaryDirectory(prefix="diffreg-fireants-") as name:
        folder = Path(name)
        warp, moved, memory = folder / "warp.nii.gz", folder / "moved.nii.gz", folder / "peak.json"
        seconds, cpu, code = run_child([python, str(HERE / "peak_memory.py"), str(memory),
                                        str(HERE / "fireants_process.py"), fixed_path, moving_path, str(warp),
                                        str(moved)], folder / "log.txt")
        if code != 0:
            raise RuntimeError(f"fireants exited with {code}:\n{(folder / 'log.txt').read_text()[-3000:]}")
        grid = fixed_image.grid
        field = displacement_on_grid(sitk.ReadImage(str(warp), sitk.sitkVectorFloat64), grid)
        peer_warped = sitk.GetArrayFromImage(sitk.ReadImage(str(moved)))
        peak = json.loads(memory.read_text())["peak_mb"]
    return PeerResult("fireants", field, seconds, cpu, consistency(moving_image, field, grid, peer_warped),
                      "FireANTs Quickstart on the CPU: AffineRegistration([4, 2, 1], [200, 100, 50], Adam 3e-3, "
                      "cc_kernel_size=5), then GreedyRegistration([4, 2, 1], [200, 100, 25], cc_kernel_size=5, "
                      "compositive, smooth_grad_sigma=1, Adam 0.5)", peak)


PEERS: dict[str, Callable[[str, str], PeerResult]] = {
    "ants-syn": ants_syn,
    "ants-syn-cc": ants_syn_cc,
    "elastix": elastix_bspline,
    "elastix-rigid": partial(elastix_bspline, initial="rigid"),
    "greedy": greedy,
    "greedy-mask": partial(greedy, moving_mask=True),
    "niftyreg": niftyreg,
    "fireants": fireants,
}
