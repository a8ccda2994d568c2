"""Several pipelines behind the one Pipeline interface: one worker process per GPU (`--gpus`) or per share of
the CPU (`--workers`), each with its own models, batch sizing and out-of-memory back-off.

  runner (lists, skips, claims, decodes, writes, reports) -> WorkerPool --pipe--> worker: WhisperxPipeline
                                                                        --pipe--> worker: WhisperxPipeline

The plan (which workers, on which device, with how many threads), the pool (the parent's side: hands out
decoded files, takes back outcomes, replaces a worker that dies), the worker (the child's side), and what
travels between them (messages).
"""
