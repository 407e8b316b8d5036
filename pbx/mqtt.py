"""One socket option for every MQTT client of the center (the core and the workers).

`aiomqtt` (over paho) leaves Nagle's algorithm on. A command's reply is a second small
write right after the PUBACK of the command; Nagle holds it until that PUBACK is
acknowledged, and the broker delays its ACK: every command round trip took 43 ms on
loopback (measured, see docs/FACTS.md). With TCP_NODELAY it takes 2-3 ms. The broker's
side is `set_tcp_nodelay true` in its configuration (`pbx.procs.mosquitto_config`).
"""

from __future__ import annotations

import logging
import socket

import aiomqtt

log = logging.getLogger("kefu.mqtt")


def no_delay(client: aiomqtt.Client) -> None:
    """Send small MQTT packets at once (TCP_NODELAY) on a connected client."""
    # aiomqtt keeps its paho client private; paho's `socket()` is the connected socket.
    sock = client._client.socket()
    if not isinstance(sock, socket.socket):
        log.warning("MQTT socket not found: small messages may wait for Nagle")
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
