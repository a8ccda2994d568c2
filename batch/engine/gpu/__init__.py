"""The GPU and its memory: batch sizes fitted to the free memory (sizing), out-of-memory back-off and the memory
records (oom), NVML reads of one device (nvml), the GPUs a run may spread over (listing) and the device the
models run on (device)."""
