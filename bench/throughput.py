"""Images/s of one MAE training step, and the model FLOPs utilisation.

ViT-Tiny, 32 px, patch 4, batch 128 (the mae_tiny32 recipe's model): forward, backward and
AdamW step, median of several steps after warm-up, in fp32 and bf16 autocast. MFU compares the
step's counted FLOPs per second with a large matrix product measured in the same run and dtype.
bf16 is skipped where the measured bf16 matrix product is far slower than fp32 (CPUs without
native bf16 instructions emulate it), and the table says so.

    python -m bench.throughput [--device auto] [--steps 8] [--batch-size 128]
"""

import argparse
import contextlib
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sslvit.methods import build_method
from sslvit.methods.mae import MAEConfig
from sslvit.models import create_vit, select_attention_kernel
from sslvit.train.distributed import resolve_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def mae_step_bench(device, precision: str, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    config = MAEConfig(decoder_embed_dim=96, decoder_depth=2)
    method = build_method(config, create_vit("vit_tiny", 32, 4, 3)).to(device)
    select_attention_kernel(method, device)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], fused=True)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    autocast = (
        torch.autocast(device.type, dtype=DTYPES[precision])
        if precision != "fp32"
        else contextlib.nullcontext()
    )

    def step():
        with autocast:
            loss, _ = method(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"images_per_s": batch_size / median, "step_s": median, "flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=8, help="timed steps after 2 warm-up steps")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows = []
    fp32_peak = matmul_flops_per_s(device, torch.float32, 2048)
    for precision in ("fp32", "bf16"):
        n = 2048 if precision == "fp32" else 256
        peak = (
            fp32_peak if precision == "fp32" else matmul_flops_per_s(device, DTYPES[precision], n)
        )
        if precision == "bf16" and peak < 0.5 * fp32_peak:
            rows.append((precision, None, None, peak, None, "skipped: emulated bf16 matmul"))
            continue
        if precision == "bf16" and n != 2048:
            peak = matmul_flops_per_s(device, DTYPES[precision], 2048)
        res = mae_step_bench(device, precision, args.batch_size, args.steps)
        mfu = res["flops"] / res["step_s"] / peak
        rows.append((precision, res["images_per_s"], res["step_s"], peak, mfu, ""))

    print()
    print(f"{'precision':<10}{'images/s':>10}{'step s':>9}{'matmul GFLOP/s':>16}{'MFU':>7}  note")
    for precision, ips, step_s, peak, mfu, note in rows:
        ips_s = f"{ips:10.1f}" if ips else f"{'-':>10}"
        step_str = f"{step_s:9.3f}" if step_s else f"{'-':>9}"
        mfu_s = f"{mfu:7.1%}" if mfu else f"{'-':>7}"
        print(f"{precision:<10}{ips_s}{step_str}{peak / 1e9:16.1f}{mfu_s}  {note}")
    fp32 = rows[0][1]
    bf16 = rows[1][1]
    if fp32 and bf16:
        print(f"bf16 / fp32 speed-up: {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
