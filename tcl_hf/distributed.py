"""The run's Accelerator, and the collectives the method needs beyond accelerate's: a gather that passes gradients
back exactly, and an "any process?" vote so every process takes the same branch."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import TCLError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import Config


class GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums, over all processes, the gradient each one's loss sends to our
    rows, built on public collectives only.

    Every process computes the same full-batch contrastive loss; after DDP averages over the W
    processes, each parameter gets exactly the gradient of that loss, so 1, 2 or 4 processes at the
    same total batch train alike. The reference's GatherLayer passes back only the local slot's
    gradient, which after DDP's averaging is 1/W of the true one (spec section 3): that is what
    ``tcl.lambda_con = 1/W_ref`` reproduces."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_equal(z: torch.Tensor) -> torch.Tensor:
    """Every process's rows, ours with gradients, when every process has as many (device-resident batches)."""
    return torch.cat(GatherWithGrad.apply(z), dim=0)


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """Every process's rows, ours with gradients; batches may differ in size (unreadable images dropped), so
    the sizes are gathered first (a host sync), rows padded to the largest batch and the padding cut away."""
    sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([z.shape[0]], device=z.device))
    sizes = [int(s) for s in torch.cat(sizes).tolist()]
    padded = F.pad(z, (0, 0, 0, max(sizes) - z.shape[0]))
    return torch.cat([part[:size] for part, size in zip(GatherWithGrad.apply(padded), sizes)], dim=0)


def any_process(flag: bool, accelerator: Accelerator) -> bool:
    """True on every process when ``flag`` is true on any (a collective when there are several)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum")
    return bool(total > 0)


# How several processes on CPUs are launched: accelerate's ``--cpu`` uses its one-process launcher (which honours
# ``--num_processes`` only through an MPI hostfile), while ``--multi_gpu`` starts them with torchrun and
# ACCELERATE_USE_CPU makes each a gloo process on the CPU.
CPU_LAUNCH = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {n}"

# The process-count variables of torchrun and of MPI launchers, as accelerate reads them.
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def check_launch(accelerator: Accelerator, env: Mapping[str, str] = os.environ) -> None:
    """Stop a launch that runs fewer processes than it was asked for, before it trains alone.

    Two ways it happens. A launcher started N processes which accelerate sees as one each (plain ``torchrun`` on
    a CPU-only machine): N independent runs would fight over one folder. Or ``accelerate launch --num_processes
    N`` took its one-process launcher (``--cpu``, or fewer than two GPUs): it sets the rendezvous port (only when
    N > 1) but no world size, and started this process alone."""
    world = max(int(env.get(name) or 1) for name in _WORLD_SIZE_VARS)
    seen = accelerator.num_processes
    if world > seen:
        raise TCLError(f"the launcher started {world} processes but accelerate sees {seen}; on a CPU-only machine "
                       f"launch with `{CPU_LAUNCH.format(n=world)}`")
    # Every `accelerate launch` sets ACCELERATE_DYNAMO_BACKEND; only its one-process launcher sets no world size.
    one_process_launcher = "ACCELERATE_DYNAMO_BACKEND" in env and not any(name in env for name in _WORLD_SIZE_VARS)
    if one_process_launcher and "MASTER_PORT" in env and seen == 1:
        raise TCLError("`accelerate launch` was asked for several processes but started only this one (its --cpu, "
                       "and a machine with fewer than two GPUs, run one); on CPUs launch with "
                       f"`{CPU_LAUNCH.format(n='N')}`")


def build_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator: the job makes it before the run folder is locked (the lock needs every process's
    vote) and hands it to the trainer."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    from .methods import method_class

    compile_model = cfg.train.compile if cfg.train.compile is not None else torch.cuda.is_available()
    kind = method_class(cfg.method)  # its traits, read before the method (it needs the model) exists
    acc = Accelerator(
        mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with="wandb" if cfg.log.with_ == "wandb" else None, project_dir=str(cfg.output_dir),
        dynamo_backend="inductor" if compile_model else "no",
        # Seeded shuffling, so a resumed epoch sees the same order as an uninterrupted one.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        # A TCL run that may fall back to CE (train.on_collapse=fallback) then trains without its projector.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=kind.unused_parameters or (
            kind.judged and cfg.train.on_collapse == "fallback"))])
    check_launch(acc)
    return acc
