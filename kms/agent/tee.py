"""What the agent reads from its TEE: the source of quotes and event logs, and the view of it.

Interface only; the sources (simulated, dstack sidecar, bare TDX) and ``read_view`` live
in the full module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class TeeSource(Protocol):
    def quote(self, report_data: bytes) -> bytes: ...
    def event_log(self) -> list[dict[str, Any]]: ...
    def app_compose(self) -> str: ...
    def vm_config(self) -> str: ...


@dataclass(frozen=True)
class TeeView:
    app_id: bytes
    instance_id: bytes
    device_id: bytes
    compose_hash: bytes
    os_image_hash: bytes
    mr_aggregated: bytes
    mrtd: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    event_log: list[dict[str, Any]]
    app_compose: str
    vm_config: str
    key_provider_info: str
