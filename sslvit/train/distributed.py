"""Process group and device from the environment that `torchrun` sets up."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by `torchrun` (RANK and WORLD_SIZE are set).

    NCCL on CUDA, gloo on the CPU. A single plain process gets rank 0 of 1 and no group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return info


def resolve_device(name: str) -> torch.device:
    """ "auto" picks this process's CUDA device when there is one, else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """Pick "fp32", "bf16" or "fp16" for autocast.

    "auto": bf16 on GPUs that support it, fp16 (with loss scaling) on older GPUs, and on the
    CPU bf16 only where the processor has native bf16 instructions: elsewhere PyTorch emulates
    bf16 matrix products, measured here at hundreds of times slower than fp32.
    """
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {name!r}; choose auto, fp32, bf16 or fp16")
    if name != "auto":
        if name == "fp16" and device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if _cpu_has_native_bf16() else "fp32"


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of a number over all processes (the number itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()
