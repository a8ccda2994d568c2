"""Putting a model that loads mid-run (a language's alignment model) on the GPU under the process's memory budget.

The model is read onto the CPU first (from the disk or the Hub: no GPU memory, no budget needed); only its move
to the device takes GPU memory, and its size is then known exactly. The move holds that size in the budget
(`BatchSizer.holding`): it waits for the other threads' batches already running, which were planned without it,
and the batches planned meanwhile leave it room. An out-of-memory all the same (memory held outside the budget,
a batch that took more than its estimate) frees the caches and tries once more, alone: the other threads'
batches end first and theirs wait until the model is on the device. A second one is raised, with the model back
on the CPU, for the caller to decide (an alignment model that will not load is the machine's fault, tried again
for the next file). It is never a batch's out-of-memory: halving a batch frees nothing for a model that needs its
whole size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batch.common.units import format_bytes
from batch.engine.gpu.oom import free_gpu_caches, is_out_of_memory

if TYPE_CHECKING:
    from batch.engine.gpu.sizing import BatchSizer

log = logging.getLogger(__name__)


def model_bytes(model: Any) -> int:
    """The bytes of a torch module's parameters and buffers: what its move to the GPU allocates."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def put_on_device(
    model: Any,
    device: str,
    budget: BatchSizer,
    free_caches: Callable[[], None] = free_gpu_caches,
    what: str = "model",
) -> Any:
    """`model` (on the CPU) moved to `device` under `budget`; tried again once after an out-of-memory, alone and
    with the caches freed. Raises the second out-of-memory (or any other error) with the model back on the CPU.
    `what` names the hold in the budget and the log."""
    size = model_bytes(model)
    try:
        return _move(model, device, budget, what, size, alone=False)
    except Exception as exc:
        if not is_out_of_memory(exc):
            _back_to_cpu(model)
            raise
        log.warning(
            "out of GPU memory putting the %s (%s) on %s: trying again alone, with the caches freed",
            what,
            format_bytes(size),
            device,
        )
    # Outside the except block: until it ends, its traceback holds what the failed move allocated.
    _back_to_cpu(model)
    free_caches()
    try:
        return _move(model, device, budget, what, size, alone=True)
    except Exception:
        _back_to_cpu(model)
        raise


def _move(model: Any, device: str, budget: BatchSizer, what: str, size: int, alone: bool) -> Any:
    with budget.holding(what, size, alone=alone):
        return model.to(device)


def _back_to_cpu(model: Any) -> None:
    """What a failed move put on the device goes back: a model half on the GPU holds memory and runs nowhere."""
    model.to("cpu")
