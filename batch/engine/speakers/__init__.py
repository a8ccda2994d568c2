"""Voices: the speaker-encoder seam (encoder), the production encoder, community-1's WeSpeaker ResNet34 loaded as
pyannote loads it (wespeaker), whether an enrolment sample can stand for one voice (samples), and the pure scoring
of embeddings: centroids, same- and different-voice pairs, the equal error rate and thresholds (scoring).

Arrays in, vectors and figures out: the library file that keeps them is batch.run.speakers's."""
