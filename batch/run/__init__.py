"""The run: one job over SOURCE into DEST. The settings made into its configuration (config), the Python API
(job), the loop over files (runner), where the files come from (work: the listing, a queue, claims), each file's
outputs and manifest (outputs, manifest), counts and the run report (tally, report), many workers on one machine
(pool), metrics.

May import: engine, formats, settings, storage, common. Never the command line.
"""
