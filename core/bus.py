"""The core's seam to the MQTT broker (aiomqtt, MQTT v5).

Subscribes to every worker's events and retained status, hands each decoded message to
the core, sends media commands as v5 requests (response topic + correlation data) and
publishes contact-center events. When the broker goes away it reconnects with backoff;
pending requests fail with a clear error instead of hanging, and calls stay up on the
workers meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pbx.mqtt import no_delay
from wire import codec
from wire.events import CommandResult, MediaCommand

log = logging.getLogger("kefu.bus")

CLIENT_ID = "kefu-core"
"""Stable, so the broker keeps the core's session (one core per broker)."""
SESSION_EXPIRY_S = 300


class BrokerUnavailable(RuntimeError):
    pass


class Bus:
    def __init__(self, host: str, port: int, on_message: Callable[[Any], Awaitable[None]]) -> None:
        self.host, self.port = host, port
        self._on_message = on_message
        self._client: aiomqtt.Client | None = None
        self._pending: dict[bytes, asyncio.Future[CommandResult]] = {}
        self._response_topic = f"{codec.PREFIX}/core/{CLIENT_ID}/response"
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Stay connected until cancelled; reconnect with backoff when the broker drops."""
        backoff = 0.2
        while True:
            try:
                # A persistent session: worker events published while the core is
                # briefly away (a broker blip, a keepalive miss) wait for it instead of
                # being lost with the call state they carry.
                session = Properties(PacketTypes.CONNECT)
                session.SessionExpiryInterval = SESSION_EXPIRY_S
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    identifier=CLIENT_ID,
                    clean_start=False,
                    properties=session,
                    keepalive=10,
                    max_queued_outgoing_messages=50_000,
                ) as client:
                    self._client = client
                    no_delay(client)
                    await client.subscribe(codec.WORKER_STATUS, qos=1)
                    await client.subscribe(codec.WORKER_EVENTS, qos=1)
                    await client.subscribe(self._response_topic, qos=1)
                    self.connected.set()
                    backoff = 0.2
                    log.info("connected to broker %s:%d", self.host, self.port)
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                log.warning("broker %s:%d unavailable (%s); retrying", self.host, self.port, exc)
            finally:
                self._client = None
                self.connected.clear()
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(BrokerUnavailable("broker connection lost"))
                self._pending.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes | bytearray) or not payload:
            return  # a cleared retained status
        if topic == self._response_topic:
            correlation = getattr(message.properties, "CorrelationData", None)
            future = self._pending.pop(bytes(correlation or b""), None)
            if future is not None and not future.done():
                try:
                    result = codec.decode(payload)
                except codec.WireError as exc:
                    result = CommandResult(ok=False, error=f"bad response: {exc}")
                future.set_result(result)
            return
        try:
            event = codec.decode(payload)
        except codec.WireError as exc:
            log.warning("ignored message on %s: %s", topic, exc)
            return
        try:
            await self._on_message(event)
        except Exception:
            # one bad event must not take the core off the bus
            log.exception("error handling %s from %s", type(event).__name__, topic)

    async def request(
        self, worker: int, command: MediaCommand, wait_s: float = 5.0
    ) -> CommandResult:
        client = self._client
        if client is None:
            raise BrokerUnavailable("not connected to the broker")
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = future
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self._response_topic
        props.CorrelationData = correlation
        try:
            await client.publish(
                codec.command_topic(worker), codec.encode(command), qos=1, properties=props
            )
            return await asyncio.wait_for(future, wait_s)
        except TimeoutError:
            return CommandResult(ok=False, error=f"worker {worker} did not answer in {wait_s}s")
        finally:
            self._pending.pop(correlation, None)

    async def publish(self, event: object, *, retain: bool = False) -> None:
        client = self._client
        if client is None:
            return  # contact-center events are live views; state is re-published on change
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(codec.topic_for(event), codec.encode(event), qos=0, retain=retain)
