"""The WhisperX pipeline, from decoded audio to timed, labelled segments: decode (audio), VAD (vad,
segmentation), the chunk queue shared across files (chunks), ASR (asr, decoding), batch sizes and GPU memory
(batching, oom, nvml), words and speakers (finish: align, diarize), channels split, and the models and device
they run on (models, loading, device). Its entry point is `WhisperxPipeline` behind the `Pipeline` interface.

Takes arrays and streams, never paths or stores. May import: settings, common. Never the run, formats, storage.
"""
