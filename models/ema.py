"""An exponential moving average of the generator's weights (the weights we ship and sample from).

Parameters are averaged; buffers (batch-norm running statistics, counters) are copied, so the EMA
generator in eval mode uses the live generator's statistics.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

EMA_WARMUP_STEPS = 10  # decay ramps as (1 + s) / (10 + s) so early, random weights are forgotten fast


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen deep copy of `module` to hold the average."""
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    return ema


def ema_decay_at(step: int, decay: float, start_step: int = 0) -> float:
    """The decay used at optimiser step `step` (0-based): 0 (plain copy) before `start_step`, then warmed up."""
    if step < start_step:
        return 0.0
    since = step - start_step
    return min(decay, (1.0 + since) / (EMA_WARMUP_STEPS + since))


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 - decay) · module for parameters; buffers copied."""
    for ema_param, param in zip(ema.parameters(), module.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), module.buffers(), strict=True):
        ema_buffer.copy_(buffer)
