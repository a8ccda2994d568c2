"""Tests of batch.common."""
