"""Speech recognition: Whisper over speech chunks of many files in shared batches (recognizer), how it decodes
(decoding: the whisperx options and the temperature fallback) and the queue that fills those batches (chunks)."""
