"""The package's version (`batch.__version__`), here so that modules inside the package need not import `batch`."""

__version__ = "0.1.0"
