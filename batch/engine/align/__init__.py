"""Word timings with wav2vec2: the aligner loaded once per language, which chains the steps (aligner), segments
prepared and words assembled as whisperx.align does (words), the model's forwards, batched where that changes
nothing (forwards), and its forced alignment of characters to frames, vectorised (trellis)."""
