"""The run: one job over SOURCE into DEST. The settings made into its configuration (config), the Python API
(job), the loop over files (runner), what is left to do (to_do), each file's outputs and manifest (outputs,
manifest), counts and the run report (tally, report), many workers (claims), metrics.

May import: engine, formats, settings, storage, common. Never the command line.
"""
