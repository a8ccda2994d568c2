"""Tests of batch.engine."""
