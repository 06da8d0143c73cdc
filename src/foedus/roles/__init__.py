"""The round logic of each federated actor, written as pods."""

from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod

__all__ = ["ClientPod", "RoundRecord", "ServerPod"]
