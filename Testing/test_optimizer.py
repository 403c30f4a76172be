"""The engine's Adam with cosine decay equals torch.optim.Adam under CosineAnnealingLR, step by step."""
import torch

from DiffusionRegistrationLib.engine.optimizer import CosineAdam


def test_cosine_adam_matches_torch_optim_adam_with_cosine_annealing():
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(2, 3, 5, 4, generator=generator), torch.randn(3, generator=generator)]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    iterations = 25
    optimizer = CosineAdam([([ours[0]], 0.3), ([ours[1]], 0.01)], iterations)
    reference = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.3}, {"params": [theirs[1]], "lr": 0.01}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, iterations, eta_min=0.0)
    target = [torch.randn(p.shape, generator=generator) for p in start]

    def loss(params):  # a non-quadratic loss so the gradients change from step to step
        return sum(((p - t) ** 2).sum() + torch.sin(3 * p).sum() for p, t in zip(params, target))

    for _ in range(iterations):
        optimizer.zero_grad()
        loss(ours).backward()
        optimizer.step()
        reference.zero_grad()
        loss(theirs).backward()
        reference.step()
        schedule.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours[0], start[0])  # it moved


def test_a_parameter_without_gradient_is_left_alone():
    moving, frozen = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    optimizer = CosineAdam([([moving, frozen], 0.1)], 10)
    (moving * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
    optimizer.step()
    torch.testing.assert_close(moving.detach(), torch.tensor([-0.1, 0.1, -0.1]))
    torch.testing.assert_close(frozen.detach(), torch.ones(3))
