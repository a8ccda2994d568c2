"""The library of voices: its file (library), reading and changing it in a folder or S3 with conditional writes
(store), enrolling samples (enrol), and measuring its threshold (calibrate). `speakers` commands call these."""
