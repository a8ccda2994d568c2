"""Tests of batch.storage."""
