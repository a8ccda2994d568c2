"""What every room may use: error types, exit codes and redaction (errors), logging (logs), byte sizes
(units), bounded work ahead (concurrency), facts about this machine (runtime), advice for known failures
(advice).

Imports nothing of batch's beyond itself.
"""
