"""Python client and `corruption-detect` CLI of the corruption detector (see README, "Score many images")."""

from client.api import (
    Client,
    ClientError,
    LocalClient,
    OverloadedError,
    Prediction,
    RefusedError,
    RequestTimeout,
    ServerError,
    ServerUnreachable,
)

__all__ = [
    "Client",
    "ClientError",
    "LocalClient",
    "OverloadedError",
    "Prediction",
    "RefusedError",
    "RequestTimeout",
    "ServerError",
    "ServerUnreachable",
]
