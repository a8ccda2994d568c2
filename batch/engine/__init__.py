"""The WhisperX pipeline, from decoded audio to timed, labelled segments: decode (audio), VAD (vad,
segmentation), the chunk queue shared across files (chunks), ASR (asr, decoding), batch sizes and GPU memory
(batching, oom, nvml), words (finish -> align: word_timing, trellis) and speakers (finish -> diarize:
speaker_embeddings), channels split (channels), and the models and device they run on (config, models,
loading, device). Its entry point is `WhisperxPipeline` behind the `Pipeline` interface (pipeline).

Takes arrays and streams, never paths or stores. May import: settings, common. Never the run, formats, storage.
"""
