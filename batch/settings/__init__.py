"""What the user wrote: the flat, validated `Settings` from flags, WHISPERX_BATCH_* variables and a TOML file
(options, sources), the value types each setting parses into (values), and shards (shard).

May import: common. `batch.run.config.configure` turns Settings into the sections the rest reads.
"""
