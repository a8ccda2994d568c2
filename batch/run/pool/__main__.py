"""`python -m batch.run.pool FD`: a worker process (see worker.py)."""

import sys

from batch.run.pool.worker import main

main(sys.argv)
