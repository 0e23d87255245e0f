"""``mdmgate`` as a client of a running gateway: a small admin API client over the
standard library (:mod:`mdmgate.client.api`) and the ``devices``, ``commands``,
``rollouts``, ``events`` and ``tokens`` commands built on it (:mod:`mdmgate.client.cli`)."""

from mdmgate.client.api import (
    ApiClient,
    ApiError,
    ClientError,
    ConnectionFailed,
    OptionError,
    resource,
)

__all__ = ["ApiClient", "ApiError", "ClientError", "ConnectionFailed", "OptionError", "resource"]
