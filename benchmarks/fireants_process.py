"""FireANTs as its Quickstart runs it, on the CPU, in the FireANTs environment (benchmarks/install_peers.sh):
affine (scales 4, 2, 1; 200, 100, 50 iterations; Adam, step 3e-3; CC window 5), then greedy deformable from
that affine (scales 4, 2, 1; 200, 100, 25 iterations; CC window 5; compositive; gradient smoothing 1; Adam,
step 0.5). Writes the warp in ANTs' format (FireANTs' own `save_as_ants_transforms`: fixed->moving
displacement in LPS mm on the fixed grid, affine included) and the moved image.

    <fireants python> benchmarks/peak_memory.py peak.json benchmarks/fireants_process.py \
        fixed.nii.gz moving.nii.gz warp.nii.gz moved.nii.gz

peers.fireants times this whole process (start-up, torch's import, reading, both stages, writing), and
peak_memory.py (standard library only) records its peak, as for the other peers.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from fireants.io import BatchedImages, FakeBatchedImages, Image
    from fireants.registration.affine import AffineRegistration
    from fireants.registration.greedy import GreedyRegistration

    fixed_path, moving_path, warp_path, moved_path = argv
    fixed = BatchedImages([Image.load_file(fixed_path, device="cpu")])
    moving = BatchedImages([Image.load_file(moving_path, device="cpu")])
    affine = AffineRegistration([4, 2, 1], [200, 100, 50], fixed, moving, optimizer="Adam", optimizer_lr=3e-3,
                                cc_kernel_size=5)
    affine.optimize()
    deformable = GreedyRegistration(scales=[4, 2, 1], iterations=[200, 100, 25], fixed_images=fixed,
                                    moving_images=moving, cc_kernel_size=5, deformation_type="compositive",
                                    smooth_grad_sigma=1, optimizer="adam", optimizer_lr=0.5,
                                    init_affine=affine.get_affine_matrix().detach())
    deformable.optimize()
    deformable.save_as_ants_transforms(warp_path)
    FakeBatchedImages(deformable.evaluate(fixed, moving), fixed).write_image(moved_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
