"""The test suite: one folder per room of the package (batch/), and the project-wide checks here."""
