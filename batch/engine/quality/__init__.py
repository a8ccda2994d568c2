"""The hallucination guard: signals per segment, a judgement, and what to do with text nobody said.

Whisper writes fluent text where nobody speaks (hold music, ringing, tones, noise, reversed or crowd speech).
Every segment (one VAD chunk, as Whisper read it) gets signals from what the pipeline already has:
- acoustic: Whisper's no-speech probability and mean log-probability, the share of the chunk the VAD found
  speech in and its mean speech score;
- textual: compression ratio, loops (a run of words repeated inside a segment), a segment repeating its
  neighbour, words per second beyond what people say, a phrase from the bag of known hallucinations;
- after alignment: the aligned words' character scores.
`judge` weighs them (a text signal counts only where an acoustic one is weak too, so a person who says "thank
you" keeps it); `guard` reads a judged segment once more with the temperature fallback, then drops or flags what
still fails and cuts loops inside real speech; `coverage` counts the VAD's speech that no kept text covers (a
caller the model cannot read); `summary` makes a file's quality record for its manifest.

Imports: numpy and the standard library only; the chunks and readings come in as plain values.
"""
