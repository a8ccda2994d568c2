"""Voice activity detection: where a recording speaks, as chunks for Whisper (speech: the pyannote and silero
detectors), and whisperx's pyannote VAD network run without importing pyannote.audio (segmentation)."""
