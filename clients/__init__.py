"""Clients of the service: the Python client, the closed-loop demo, the recording replayer."""

from alignnet.clients.client import AsyncClient, Client, ServiceError

__all__ = ["AsyncClient", "Client", "ServiceError"]
