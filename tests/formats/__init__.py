"""Tests of batch.formats."""
