"""Word timings with wav2vec2: the aligner loaded once per language (aligner), the word timings as whisperx.align
gives them (words) and its forced alignment of characters to frames, vectorised (trellis)."""
