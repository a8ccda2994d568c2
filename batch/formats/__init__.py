"""What a transcript is written as: the transcript JSON and RTTM (transcript), subtitles (subtitles), speaker
turns (turns). Pure functions of segments, no I/O.

May import: settings, common. Never the engine, the run or storage.
"""
