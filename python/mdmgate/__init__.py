"""mdmgate: a device-management gateway for Windows OMA-DM and Apple MDM fleets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mdmgate")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
