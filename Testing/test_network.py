"""The registration network: geometry, training, fine-tuning, resume, torchrun, checkpoints, batches.

Images: BrainT1Slice.png resampled to 32x32 over its field of view (the network grid of the tests),
deformed by known random smooth fields (synthetic.random_smooth_displacement), so every accuracy
claim is measured against the true deformation. Training runs on one thread (the machine is shared).
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffusionRegistrationLib.io.data import ITK_T1_SLICE, data_file
from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.core.image import Grid, Image
from DiffusionRegistrationLib.io.images import normalize, read_image, write_image
from DiffusionRegistrationLib.geometry.metrics import field_tre
from DiffusionRegistrationLib.network.batch import run_batch
from DiffusionRegistrationLib.network.data import Augmentation, SyntheticPairDataset, pull_onto, synthetic_cases
from DiffusionRegistrationLib.network.inference import (TrainedNetwork, load_network, network_loss,
                                                        register_with_network)
from DiffusionRegistrationLib.network.model import (NetworkSpec, RegistrationNetwork, compose, inverse_consistency,
                                                    network_grid, normalised_to_mm)
from DiffusionRegistrationLib.network.train import TrainConfig, train
from DiffusionRegistrationLib.io.transform_files import read_displacement

SIZE = (32, 32)
MAX_MM, SMOOTH_MM = 12.0, 60.0


@pytest.fixture(autouse=True)
def one_thread():
    """Training is many small ops: one thread is faster on a shared 2-core machine, and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> str:
    try:
        image = read_image(data_file(ITK_T1_SLICE))
    except RegistrationError as error:
        pytest.skip(str(error))
    grid = network_grid(image.grid, SIZE)
    smooth = sitk.SmoothingRecursiveGaussian(image.to_sitk(), 2.5)
    small = sitk.Resample(smooth, grid.apply_to(sitk.Image(list(SIZE), sitk.sitkFloat32)), sitk.Transform(),
                          sitk.sitkLinear)
    return str(write_image(Image.from_sitk(small), tmp_path_factory.mktemp("network") / "t1_32.nii.gz"))


def _spec(**overrides) -> NetworkSpec:
    return NetworkSpec(**{"dim": 2, "size": SIZE, "stages": (4, 2, 1), "channels": (16, 32, 32), **overrides})


@pytest.fixture(scope="module")
def trained(slice_file, tmp_path_factory):
    """A network trained for 300 steps (MSE, batch 4) on synthetic pairs of the slice."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("trained")
    dataset = SyntheticPairDataset([slice_file], _spec(), MAX_MM, SMOOTH_MM, Augmentation(0.0, 0.0))
    config = TrainConfig(similarity="mse", regularization=0.01, steps=300, batch_size=4, lr=2e-3,
                         checkpoint_every=300, log_every=50, device="cpu")
    outcome = train(dataset, _spec(), config, checkpoint_dir=folder, log_dir=folder / "logs", show_bar=False)
    return outcome, load_network(outcome.checkpoint, torch.device("cpu"))


@pytest.fixture(scope="module")
def held_out(slice_file):
    return synthetic_cases([read_image(slice_file)], 4, MAX_MM, seed=999, smoothness_mm=SMOOTH_MM)


def test_normalised_displacement_maps_to_millimetres_on_an_oblique_grid():
    angle = np.deg2rad(30)
    direction = (np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle))
    grid = Grid((9, 5), (2.0, 3.0), (10.0, -4.0), direction)
    to_index = grid.index_to_physical()
    # one normalised unit along x is half the field of view: (9 - 1) / 2 voxels of 2 mm along the x axis
    start, end = to_index @ [0, 2, 1], to_index @ [4, 2, 1]
    np.testing.assert_allclose(normalised_to_mm(grid) @ [1.0, 0.0], (end - start)[:2], atol=1e-12)


def test_composition_and_inverse_consistency_on_analytic_fields():
    shape = (17, 17)
    ones = torch.ones(1, 1, *shape)
    first, second = torch.cat([0.1 * ones, -0.05 * ones], 1), torch.cat([0.02 * ones, 0.03 * ones], 1)
    torch.testing.assert_close(compose(first, second), first + second)
    # u(x) = A x and its exact inverse v(x) = ((I + A)^-1 - I) x: the composition is the identity
    a = torch.tensor([[0.1, 0.05], [0.0, 0.2]])
    axes = torch.linspace(-1, 1, 17)
    y, x = torch.meshgrid(axes, axes, indexing="ij")
    points = torch.stack([x, y], -1)
    forward = (points @ a.T).movedim(-1, 0)[None]
    backward = (points @ (torch.linalg.inv(torch.eye(2) + a) - torch.eye(2)).T).movedim(-1, 0)[None]
    assert float(inverse_consistency(forward, backward)) < 1e-8
    assert float(inverse_consistency(forward, forward)) > 0.05  # gradient 2A + A^2 is far from zero


def _oblique_copy(image: Image, spacing: list[float], shift_mm: list[float]) -> Image:
    """The image resampled (SimpleITK) onto a coarser grid rotated 20 degrees about z and shifted."""
    d = image.dim
    angle = np.deg2rad(20)
    rotation = np.eye(d)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    extent = np.asarray(image.grid.size) * np.asarray(image.grid.spacing)
    size = np.ceil(extent / np.asarray(spacing)).astype(int)
    origin = image.grid.center() + shift_mm - rotation @ (np.asarray(spacing) * (size - 1) / 2)
    grid = Grid(tuple(int(v) for v in size), tuple(spacing), tuple(origin), tuple(rotation.ravel()))
    reference = grid.apply_to(sitk.Image(list(grid.size), sitk.sitkFloat32))
    return Image.from_sitk(sitk.Resample(image.to_sitk(), reference, sitk.Transform(), sitk.sitkLinear, 0.0))


@pytest.mark.parametrize("dim", [2, 3])
def test_untrained_network_is_identity_and_resamples_through_physical_space(dim, slice_file, colin_small):
    """Any input grid: the moving image on an oblique, coarser, shifted grid lands where SimpleITK puts it."""
    fixed = read_image(slice_file) if dim == 2 else colin_small
    moving = _oblique_copy(fixed, [7.0, 9.0] if dim == 2 else [8.0, 7.0, 9.0],
                           [15.0, -10.0] if dim == 2 else [12.0, -8.0, 5.0])
    for output in ("displacement", "velocity"):
        spec = _spec(output=output) if dim == 2 else NetworkSpec(dim=3, size=(16, 20, 16), stages=(4, 2, 1),
                                                                   channels=(4, 8), output=output)
        network = TrainedNetwork(RegistrationNetwork(spec), spec, {}, 0)
        result = register_with_network(fixed, moving, network, device="cpu")
        assert result.displacement.shape == (*fixed.grid.shape, dim)
        assert np.abs(result.displacement).max() == 0.0
    source = fixed.to_sitk()
    reference = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), source, sitk.Transform(), sitk.sitkLinear, 0.0))
    # compare where the fixed voxel falls at least one voxel inside the moving image (the borders'
    # out-of-image conventions of ITK and grid_sample differ)
    index = np.stack(np.meshgrid(*map(np.arange, fixed.grid.shape), indexing="ij")[::-1], -1).reshape(-1, dim)
    points = index @ fixed.grid.index_to_physical()[:dim, :dim].T + fixed.grid.index_to_physical()[:dim, dim]
    in_moving = points @ moving.grid.physical_to_index()[:dim, :dim].T + moving.grid.physical_to_index()[:dim, dim]
    inside = np.all((in_moving >= 1) & (in_moving <= np.asarray(moving.grid.size) - 2), axis=1).reshape(fixed.grid.shape)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(result.warped.array[inside], reference[inside], atol=1e-4 * float(np.abs(reference).max()))


def test_training_lowers_the_loss_and_beats_identity_on_held_out_pairs(trained, held_out):
    outcome, network = trained
    losses = [h["loss"] for h in outcome.history]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    identity = [field_tre(c.true_displacement, np.zeros_like(c.true_displacement))["mean"] for c in held_out]
    learned = [field_tre(c.true_displacement,
                         register_with_network(c.fixed, c.moving, network, device="cpu").displacement)["mean"]
               for c in held_out]
    assert np.mean(learned) < 0.75 * np.mean(identity), (learned, identity)
    with open(outcome.checkpoint.parent / "logs" / "train.csv") as handle:
        logged = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in logged] == list(range(50, 301, 50))
    assert list((outcome.checkpoint.parent / "logs").glob("events.out.tfevents.*"))  # TensorBoard


def test_finetuning_lowers_the_pair_loss_and_its_transform_is_returned(trained, held_out):
    _, network = trained
    case = held_out[0]
    before = {k: v.clone() for k, v in network.model.state_dict().items()}
    plain = register_with_network(case.fixed, case.moving, network, device="cpu")
    tuned = register_with_network(case.fixed, case.moving, network, finetune_steps=30, finetune_lr=1e-3, device="cpu")
    # the fixed grid is the network grid, so the returned field is the network output at its voxels:
    # recompute the training loss of each returned transform from the Result alone
    grid = case.fixed.grid
    batch = {"fixed": pull_onto(normalize(case.fixed), grid)[None], "moving": pull_onto(normalize(case.moving), grid)[None],
             "to_mm": torch.as_tensor(normalised_to_mm(grid), dtype=torch.float32)[None],
             "spacing": torch.as_tensor(grid.spacing, dtype=torch.float32)[None]}
    to_normalised = torch.as_tensor(np.linalg.inv(normalised_to_mm(grid)), dtype=torch.float32)
    loss = network_loss(network.config)

    def loss_of(result) -> float:
        field = (torch.as_tensor(result.displacement) @ to_normalised.T).movedim(-1, 0)[None]
        return float(loss(lambda f, m: field, batch)[0])

    first, last = tuned.history[0], tuned.history[-1]
    assert last["final"] and last["step"] == 30
    assert loss_of(plain) == pytest.approx(first["loss"], rel=1e-4)
    assert loss_of(tuned) == pytest.approx(last["loss"], rel=1e-4)
    assert loss_of(tuned) < 0.7 * loss_of(plain)
    truth = case.true_displacement
    assert field_tre(truth, tuned.displacement)["mean"] < field_tre(truth, plain.displacement)["mean"]
    for key, value in network.model.state_dict().items():  # the caller's network is left as it was
        assert torch.equal(value, before[key]), key


def test_resume_continues_exactly(slice_file, tmp_path):
    spec = _spec(stages=(2, 1), channels=(4, 8))
    dataset = SyntheticPairDataset([slice_file], spec, MAX_MM, SMOOTH_MM, Augmentation(0.05, 0.2))

    def config(steps: int) -> TrainConfig:
        return TrainConfig(similarity="mse", steps=steps, batch_size=2, lr=1e-3, checkpoint_every=3, device="cpu")

    straight = train(dataset, spec, config(6), checkpoint_dir=tmp_path / "a", show_bar=False)
    train(dataset, spec, config(3), checkpoint_dir=tmp_path / "b", show_bar=False)
    resumed = train(dataset, spec, config(6), checkpoint_dir=tmp_path / "b", resume=tmp_path / "b", show_bar=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[3:]]
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6)
    with pytest.raises(RegistrationError, match="batch_size"):
        train(dataset, spec, TrainConfig(similarity="mse", steps=6, batch_size=4, device="cpu"),
              resume=tmp_path / "b" / "step_0000003.pt", show_bar=False)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_two_gloo_ranks_match_one_process(slice_file, tmp_path):
    arguments = ["-m", "DiffusionRegistrationLib.cli.main", "train", "--synthetic", slice_file, "--steps", "3",
                 "--batch-size", "4", "--similarity", "mse", "--grid", "32,32", "--stages", "2,1", "--channels", "4,8",
                 "--lr", "1e-3", "--max-deformation", str(MAX_MM), "--smoothness", str(SMOOTH_MM), "--threads", "1",
                 "--device", "cpu", "--progress", "none", "--validation-synthetic", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *arguments, "--checkpoint-dir", str(tmp_path / "one"),
                             "--log-dir", str(tmp_path / "logs")],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert single.returncode == 0, single.stderr
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                            "127.0.0.1", "--master_port", str(_free_port()), *arguments,
                            "--checkpoint-dir", str(tmp_path / "two")],
                           capture_output=True, text=True, timeout=300, env=environment)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "latest.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "latest.pt", weights_only=True)
    assert one["step"] == two["step"] == 3
    changed = 0
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6)
        changed += int(not torch.equal(value, RegistrationNetwork(_spec(stages=(2, 1), channels=(4, 8))).state_dict()[key]))
    assert changed > 0
    with open(tmp_path / "logs" / "validation.csv") as handle:  # held-out synthetic pairs: TRE in mm
        validation = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in validation] == [3] and 0 < float(validation[0]["tre_mm"]) < 3 * MAX_MM


def test_a_damaged_checkpoint_is_a_registration_error(trained, held_out, tmp_path):
    outcome, _ = trained
    case = held_out[0]
    good = outcome.checkpoint.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    for name in ("truncated.pt", "noise.pt", "other.pt", "missing.pt"):
        with pytest.raises(RegistrationError, match=name):
            register_with_network(case.fixed, case.moving, tmp_path / name, device="cpu")


def test_batch_splits_across_ranks_skips_done_pairs_and_writes_itk_transforms(trained, held_out, tmp_path,
                                                                              monkeypatch):
    outcome, network = trained
    rows = []
    for index, case in enumerate(held_out[:3]):
        rows.append({"fixed": str(write_image(case.fixed, tmp_path / f"f{index}.nii.gz")),
                     "moving": str(write_image(case.moving, tmp_path / f"m{index}.nii.gz")), "name": f"pair{index}"})
    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["fixed", "moving", "name"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        done[rank] = run_batch(tmp_path / "pairs.csv", out, network=outcome.checkpoint, device="cpu")
    assert [(s["name"], s["status"]) for s in done["0"]] == [("pair0", "done"), ("pair2", "done")]
    assert [(s["name"], s["status"]) for s in done["1"]] == [("pair1", "done")]
    monkeypatch.setenv("RANK", "0")
    again = run_batch(tmp_path / "pairs.csv", out, network=outcome.checkpoint, device="cpu")
    assert [s["status"] for s in again] == ["skipped", "skipped"]
    field, grid = read_displacement(out / "pair1" / "transform.h5")
    direct = register_with_network(read_image(rows[1]["fixed"]), read_image(rows[1]["moving"]), network, device="cpu")
    assert grid.same_as(direct.fixed_grid)
    np.testing.assert_allclose(field, direct.displacement, atol=1e-4)


def test_pair_sources_labels_and_validation_metrics(slice_file, tmp_path):
    from DiffusionRegistrationLib.network.data import (PairDataset, RandomPairDataset, cases_from_records,
                                                       folder_pairs, images_from_csv, pairs_from_csv)
    from DiffusionRegistrationLib.network.inference import validate_network

    image = read_image(slice_file)
    labels = image.with_array((normalize(image).array * 3).round().astype(np.int16))  # classes 0..3
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_image(image, folder / f"{name}.nii.gz")
    write_image(labels, tmp_path / "labels.nii.gz")
    assert len(folder_pairs(folder)) == 6 and len(folder_pairs(folder, "consecutive")) == 2
    (tmp_path / "landmarks_moving.csv").write_text("x,y\n0,0\n10,-20\n")
    (tmp_path / "landmarks_fixed.csv").write_text("x,y\n3,4\n13,-16\n")  # moved by (3, 4): 5 mm
    (tmp_path / "pairs.csv").write_text(
        "fixed,moving,fixed_labels,moving_labels,fixed_landmarks,moving_landmarks\n"
        "cohort/a.nii.gz,cohort/b.nii.gz,labels.nii.gz,labels.nii.gz,landmarks_fixed.csv,landmarks_moving.csv\n")
    records = pairs_from_csv(tmp_path / "pairs.csv")  # paths relative to the CSV's folder
    assert records[0].fixed == str(tmp_path / "cohort" / "a.nii.gz")
    sample = PairDataset(records, _spec()).sample(7)  # no augmentation: the images on the network grid
    np.testing.assert_allclose(sample["fixed"][0].numpy(), normalize(image).array, atol=1e-5)
    assert set(np.unique(sample["moving_labels"].numpy())) <= {0, 1, 2, 3}
    (tmp_path / "images.csv").write_text("image,labels\ncohort/a.nii.gz,labels.nii.gz\ncohort/b.nii.gz,labels.nii.gz\n")
    augmented = RandomPairDataset(images_from_csv(tmp_path / "images.csv"), _spec(), Augmentation(0.1, 0.3))
    first, again = augmented.sample(3), augmented.sample(3)
    assert torch.equal(first["fixed"], again["fixed"])  # the seed fixes pair and augmentation
    assert not torch.allclose(first["fixed"], sample["fixed"], atol=1e-3)  # and augmentation did something
    spec = _spec()
    network = TrainedNetwork(RegistrationNetwork(spec), spec, {}, 0)  # identity
    metrics = validate_network(network, cases_from_records(records), torch.device("cpu"))
    assert metrics["dice"] == 1.0 and metrics["tre_mm"] == pytest.approx(5.0, abs=1e-5)
    (tmp_path / "bad.csv").write_text("source,target\na,b\n")
    with pytest.raises(RegistrationError, match="fixed, moving"):
        pairs_from_csv(tmp_path / "bad.csv")
