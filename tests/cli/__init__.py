"""Tests of batch.cli."""
