"""`bench.gpu_kit`: a GPU check that fits a lent machine (15 minutes in all, no network, 64 MiB carried in).

The lent machine has Python 3.12 with torch (CUDA 13), torchaudio, transformers, nvidia-ml-py, numpy, pandas,
typer and tqdm; it lacks CTranslate2, faster-whisper, whisperx, pyannote, PyAV, ffmpeg and CUDA 12's cuBLAS. So:

- `python -m bench.gpu_kit pack DIR` (here, with PyPI at hand) writes into DIR the project's `batch` and `bench`
  sources, the cp312 manylinux wheels of what the machine lacks and the steps need (`pack.WHEELS`: CTranslate2,
  asteroid-filterbanks, einops, pyannote.audio, faster-whisper, whisperx without its VAD weights, omegaconf,
  antlr4 and nltk, installed without dependencies), a short recording made with
  espeak-ng, and `run.sh`. No weights: every model is built on the machine at full size with random weights
  (`models`). Packing fails, saying so, when DIR would pass `pack.LIMIT_BYTES` (60 MiB).
- `bash DIR/run.sh OUTDIR` (there) unpacks the wheels into a temporary folder (`install`: no pip needed), points
  CUDA's JIT cache at OUTDIR/cuda-cache, then runs each step as its own process under its own `timeout`
  (`steps.STEPS`, in that order; 8 minutes in all), and writes OUTDIR/gpu_kit.json and OUTDIR/gpu_kit.md
  (`report`). A step that fails or runs out of time writes its error; the others still run. Without a CUDA
  device it says "no GPU" (and why) within seconds, still writes both files, and exits 0.

The steps: `cuda` (what torch sees), `ct2` (whether CTranslate2 runs on CUDA there, what fails when not, and its
JIT paid once, timed, before anything else is timed or sized; whether its converter makes the tested model under
the machine's transformers), `device` (what the project's device choice decides on this pip-style install, and
why), `memory` (NVML's free memory against `torch.cuda.mem_get_info`), `oom` (a real out-of-memory per stage and
the back-off's recovery), `vad`, `align`, `align_large`, `embed` (memory per batch item, fitted after a warm-up
batch, against the batch sizer's constants, and throughput at several batch sizes; `align_large` is the
XLSR-53-large shape of most non-English alignment models), `alloc` (torch's allocator, default against
expandable segments, on padded batches of varying length, each in its own process), `asr` (a large-v3-shaped
random Whisper: memory per item, throughput), `pipeline` (the GPU busy share over the stages run on the
recording), `whisperx` (the project's own WhisperxPipeline on the recording: its GPU busy share and peak memory,
and torch's cache against CTranslate2's ASR, `real_pipeline`) and `sticky` (a real sticky CUDA error in one
process: what the project makes of it, and whether another process and a fresh one still compute).
docs/gpu-memory.md says what each figure means.
"""
