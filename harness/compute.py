"""Where a run computes and in what precision: the device, bf16 autocast, and what CUDA is told.

A run resolves its device once, from `--harness-device` (`auto`: CUDA when
present), and takes its precision from `--harness-precision` (fp32 by default,
or bf16 autocast), and hands both to every stage. Precision changes numbers, so
it is part of every cache key and of every row's identity: tables never merge
rows computed in different precisions.

fp32 is the default on a GPU too because bf16 did not pay where it was
measured: on one H200 at the paper's width and MIMIC's batch of 128, a SimCLR
step ran at 0.73x and a MIMIC distillation step at 0.93x of fp32's throughput
(docs/RESULTS.md, "On one GPU"). At these sizes a step is bound by launching kernels, not
by arithmetic, and autocast adds casts.

bf16 autocast covers the encoder and projector forwards of the training loops
(SimCLR pre-training, BadEncoder and the attacks built on it, BadNets,
distillation in MIMIC, MEDIC and NAD, the SimCLR fine-tuning FT, FP and NAD
share); their outputs are cast back to fp32 before any loss, so every loss,
every MINE statistics network and every optimiser state is fp32. Stages that
optimise small quantities against a threshold stay fp32 throughout: MINE
(log-mean-exp bounds), the trigger inversions of DECREE and MOTH (a mask's L1
share is their verdict), ANP's masks and perturbations, and evaluation (probe
features and the exposure are measurements, and cost little).

On CUDA, cuDNN picks its fastest convolution algorithms (`cudnn.benchmark`),
which may differ between runs; `deterministic=True` asks PyTorch for
deterministic algorithms instead (docs/DESIGN.md, "Determinism": what that covers).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch
from torch import Tensor

PRECISIONS = ("fp32", "bf16")
DEVICE_HELP = "cpu, cuda, cuda:N or auto"


class DeviceError(ValueError):
    """A device that cannot be used: not present, not a device, or out of memory; the message is one line."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it, or for a GPU that is not there, is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device must be {DEVICE_HELP}, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be {DEVICE_HELP}, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`name` checked: fp32, or bf16 (on the CPU, or on a GPU that has bf16)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be {' or '.join(PRECISIONS)}, got {name!r}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `precision` is bf16; otherwise a block that changes nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_stages(encoder: torch.nn.Module, x: Tensor, precision: str) -> tuple[dict[str, Tensor], Tensor]:
    """`encoder.forward_stages(x)` under the precision's autocast, its outputs in fp32 (a no-op in fp32)."""
    with autocast(x.device, precision):
        stages, h = encoder.forward_stages(x)
    return {s: m.float() for s, m in stages.items()}, h.float()


def forward(fn: Callable[[Tensor], Tensor], x: Tensor, precision: str) -> Tensor:
    """`fn(x)` (a module, or modules chained) under the precision's autocast, in fp32."""
    with autocast(x.device, precision):
        out = fn(x)
    return out.float()


def prepare(device: torch.device, deterministic: bool = False) -> None:
    """Tell PyTorch how to compute on `device`: cuDNN autotuning on CUDA, or deterministic algorithms when asked.

    Deterministic mode warns (not raises) on an operation without a deterministic CUDA kernel, so a run finishes
    and names what was not covered.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def describe(device: torch.device, precision: str) -> str:
    """`cuda:0 (NVIDIA H200), bf16 autocast` or `cpu, fp32`."""
    name = device.type if device.index is None else f"{device.type}:{device.index}"
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return f"{name}, {'bf16 autocast' if precision == 'bf16' else 'fp32'}"


def device_failure(error: BaseException) -> str | None:
    """One line for CUDA's own failures (out of memory, a CUDA error, tensors on two devices); None for any other error."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        return (f"CUDA out of memory ({first[:160]}); lower the batch sizes with --set (ssl_batch, attack_batch, "
                "defense_batch, probe_batch) or choose a smaller profile")
    text = str(error)
    if isinstance(error, RuntimeError) and any(word in text for word in ("CUDA", "cuda", "device")):
        return f"device error: {next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)[:200]}"
    return None
