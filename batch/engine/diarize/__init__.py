"""Speakers: pyannote's diarization fed the decoded array and its speakers given to words and segments (diarizer),
and the speaker embeddings with one embedding-trunk pass per window (speaker_embeddings)."""
