"""Tests of batch.settings."""
