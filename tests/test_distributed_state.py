"""State that DDP does not synchronise (it averages gradients only) stays identical on every rank:
the EMA codebook, the code-usage counts, the dead-code restarts and the diffusion loss's
importance-sampling history, on 2 gloo CPU processes."""

import dataclasses
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqdiffusion.diffusion.loss import DiffusionLoss
from vqdiffusion.diffusion.schedule import NoiseSchedule
from vqdiffusion.lit.tokenizer_module import TokenizerModule
from vqdiffusion.models.vqvae import VectorQuantizer
from vqdiffusion.tiny import TINY_VQVAE

WORLD = 2


def rank_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s own batch: encoder outputs (2, 4, 3, 3) for the quantizer, images for the module."""
    generator = torch.Generator().manual_seed(10 + rank)
    size = TINY_VQVAE.sample_size
    return torch.randn(2, 4, 3, 3, generator=generator), torch.rand(2, 3, size, size, generator=generator) * 2 - 1


def rank_bounds(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s training batch as the history sees it: t (3,), distinct across ranks (one
    value per t), and the bounds (3,)."""
    return torch.arange(3) + 1 + 3 * rank, torch.rand(3, generator=torch.Generator().manual_seed(rank)) + 1


def history_after(t: torch.Tensor, bound: torch.Tensor) -> DiffusionLoss:
    loss = DiffusionLoss(NoiseSchedule(6))
    loss._update_history(t, bound)
    return loss


def build() -> tuple[VectorQuantizer, TokenizerModule]:
    """The same initial weights on every rank (as DDP broadcasts them) and in the single process."""
    torch.manual_seed(0)
    return (VectorQuantizer(num_codes=8, dim=4, beta=0.25, ema_decay=0.5).train(),
            TokenizerModule(dataclasses.asdict(TINY_VQVAE)))


def one_rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        z, images = rank_inputs(rank)
        quantizer, module = build()
        quantizer(z)
        module.training_step({"image": images}, 0)  # adds this step's code usage
        usage = module.code_usage.clone()
        module.code_usage.zero_()  # every code dead
        torch.manual_seed(100 + rank)  # different picks on each rank, as their batches differ anyway
        module._restart_dead_codes(images)
        history = history_after(*rank_bounds(rank))
        results[rank] = {"loss_sq_history": history.loss_sq_history.clone(), "loss_count": history.loss_count.clone(),
                         "ema_weight": quantizer.embedding.weight.clone(), "ema_count": quantizer.ema_count.clone(),
                         "usage": usage, "restarted": module.vqvae.quantize.embedding.weight.detach().clone()}
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(one_rank, args=(port, results), nprocs=WORLD, join=True)
        return [dict(results[r]) for r in range(WORLD)]


def test_the_ema_codebook_moves_alike_on_every_rank_as_one_process_with_the_global_batch(ranks):
    single, _ = build()
    single(torch.cat([rank_inputs(r)[0] for r in range(WORLD)]))
    for result in ranks:
        torch.testing.assert_close(result["ema_count"], single.ema_count)
        torch.testing.assert_close(result["ema_weight"], single.embedding.weight, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(single.ema_count, torch.ones(8))  # the update moved the counts


def test_code_usage_counts_every_ranks_codes(ranks):
    _, single = build()
    codes = torch.cat([single.vqvae(rank_inputs(r)[1])[2].flatten() for r in range(WORLD)])
    expected = torch.bincount(codes, minlength=single.vqvae.num_codes).float()  # from zero usage
    for result in ranks:
        torch.testing.assert_close(result["usage"], expected)


def test_dead_code_restarts_write_the_same_vectors_on_every_rank(ranks):
    torch.testing.assert_close(ranks[0]["restarted"], ranks[1]["restarted"], rtol=0, atol=0)
    initial = build()[1].vqvae.quantize.embedding.weight
    assert not torch.allclose(ranks[0]["restarted"], initial)  # the restart did replace the codes


def test_the_importance_history_holds_every_ranks_samples(ranks):
    single = history_after(*(torch.cat(parts) for parts in zip(*(rank_bounds(r) for r in range(WORLD)))))
    assert single.loss_count.sum() == 3 * WORLD and single.loss_sq_history[:6].gt(0).all()
    for result in ranks:
        torch.testing.assert_close(result["loss_count"], single.loss_count)
        torch.testing.assert_close(result["loss_sq_history"], single.loss_sq_history)
