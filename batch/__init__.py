"""whisperx-batch: turn a folder of recordings into timed, speaker-labelled transcripts."""

__version__ = "0.1.0"
