"""The WhisperX pipeline, from decoded audio to timed, labelled segments, one room per stage:
vad/ (where speech is), asr/ (Whisper over chunks of many files; the chunk queue), align/ (word timings),
diarize/ (speakers) and gpu/ (batch sizes, out-of-memory back-off, NVML, GPU listing, device). Loose here,
what ties them together: decode (audio), the `Pipeline` interface (pipeline) and its entry point
`WhisperxPipeline` (whisperx_pipeline), the models a run loads and where they come from (loading, config),
words and speakers after ASR (finish) and channels split (channels).

Takes arrays and streams, never paths or stores. May import: common. Never the run, formats, storage, nor the
settings: it reads only its own config sections (config), which the run makes from them.
"""
