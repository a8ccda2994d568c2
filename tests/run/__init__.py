"""Tests of batch.run."""
