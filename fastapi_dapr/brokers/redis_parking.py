"""`pubsub.redis`: a message delivered `maxDeliveryCount` times without being processed is parked.

Redis counts the deliveries of each pending entry: `XREADGROUP` gives it 1, each
`XAUTOCLAIM` adds one (the idle-time refresh, `XCLAIM ... JUSTID`, does not). A
message given up on its last allowed delivery, or claimed once more than allowed
(its deliveries crashed or were cut short, so none of them gave it up), is copied
to the parking stream `<topic>:parked:<consumerID>` and acknowledged in the group,
both in one Lua script, so that it is never in neither place nor in both. There it
leaves the delivery loop, and stays for an operator to read (`XRANGE`) and to
replay (docs/redis.md). A stream, not the group's pending list, because the
group's stale entries are claimed again, and a stream is not trimmed with the
topic: the parked entry keeps the original's fields (`data`, `metadata`) and adds
where it came from, so it can also be read as a topic.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from . import BrokerMetrics
from .redis_settings import RedisSettings

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")
events = logging.getLogger("fastapi_dapr.delivery")  # what became of messages, as the engine logs it

# KEYS: the topic's stream, its parking stream. ARGV: the group, this consumer, the delivery
# count from which an entry is parked, then the entry ids. Per id: {what became of it, its
# delivery count}, with the states of `Settled`.
_PARK = """
local topic, parking = KEYS[1], KEYS[2]
local group, consumer, threshold = ARGV[1], ARGV[2], tonumber(ARGV[3])
local answers = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', topic, group, id, id, 1, consumer)[1]
  if pending == nil then
    answers[#answers + 1] = {0, 0}
  elseif pending[4] < threshold then
    answers[#answers + 1] = {1, pending[4]}
  else
    local entry = redis.call('XRANGE', topic, id, id)[1]
    local state = 3
    if entry ~= nil then
      local fields = {parking, '*'}
      for j = 1, #entry[2], 2 do
        if string.sub(entry[2][j], 1, 6) ~= 'parked' then
          fields[#fields + 1] = entry[2][j]
          fields[#fields + 1] = entry[2][j + 1]
        end
      end
      for _, field in ipairs({'parkedTopic', topic, 'parkedId', id, 'parkedGroup', group,
                              'parkedConsumer', consumer, 'parkedDeliveries', pending[4]}) do
        fields[#fields + 1] = field
      end
      redis.call('XADD', unpack(fields))
      state = 2
    end
    redis.call('XACK', topic, group, id)
    answers[#answers + 1] = {state, pending[4]}
  end
end
return answers
"""


class Settled(enum.IntEnum):
    """What the parking script did with one entry."""

    NOT_MINE = 0  # no longer pending for this consumer: acknowledged, or claimed by another
    PENDING = 1  # under the threshold: left pending, delivered again
    PARKED = 2  # copied to the parking stream and acknowledged
    GONE = 3  # trimmed from the stream meanwhile: nothing left to keep, acknowledged


def parking_key(topic: str, group: str) -> str:
    """The parking stream of one consumer group on one topic."""
    return f"{topic}:parked:{group}"


class Parking:
    """The parking of one broker: its script on the broker's client (sent as EVALSHA, loaded
    again if Redis forgot it), and what is said and counted for each message parked."""

    def __init__(
        self, client: Any, pubsub: str, settings: RedisSettings, metrics: BrokerMetrics | None
    ) -> None:
        self._pubsub = pubsub  # the component's name, in what is said
        self._settings = settings
        self._metrics = metrics
        self._script = client.register_script(_PARK)

    async def settle(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], threshold: int
    ) -> list[tuple[Settled, int]]:
        """Park the entries of `ids` delivered at least `threshold` times; for each id, what
        became of it and its delivery count."""
        answers = await self._script(
            keys=[topic, parking_key(topic, group)], args=[group, consumer, threshold, *ids]
        )
        return [(Settled(int(state)), int(count)) for state, count in answers]

    async def give_up(self, topic: str, group: str, consumer: str, message_id: str) -> None:
        """A message the engine could not settle: parked on its last allowed delivery, else
        left pending for another one."""
        settings = self._settings
        try:
            ((state, count),) = await self.settle(
                topic, group, consumer, [message_id], settings.max_deliveries
            )
        except (RedisError, OSError) as exc:  # still pending: counted, and parked at a later try
            deliveries = f" (its deliveries could not be counted: {exc})"
        else:
            if state is Settled.PARKED:
                self._report(topic, group, message_id, count, "every delivery failed")
                return
            if state is not Settled.PENDING:
                return  # settled elsewhere meanwhile, or trimmed: nothing left to deliver
            deliveries = f" (delivery {count} of at most {settings.max_deliveries})"
        logger.warning(
            "redis pubsub %s: message %s of %s not acknowledged%s; it will be delivered again after %gs",
            self._pubsub,
            message_id,
            topic,
            deliveries,
            settings.processing_timeout,
        )

    async def sift_claimed(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[bool]:
        """For each entry just claimed, whether to deliver it. One claimed once more than
        allowed was never settled by its deliveries (the processes that took it died or
        stopped each time), so none of them gave it up: it is parked, not delivered again."""
        settled = await self.settle(topic, group, consumer, ids, self._settings.max_deliveries + 1)
        for message_id, (state, count) in zip(ids, settled, strict=True):
            if state is Settled.PARKED:
                self._report(topic, group, message_id, count, "none of its deliveries was settled")
        return [state is Settled.PENDING for state, _ in settled]

    def _report(self, topic: str, group: str, message_id: str, deliveries: int, why: str) -> None:
        settings = self._settings
        parking = parking_key(topic, group)
        reason = f"delivered {deliveries} times (maxDeliveryCount {settings.max_deliveries}), {why}"
        events.warning(
            "redis pubsub %s: message %s of %s %s; parked in stream %s, to be replayed from there",
            self._pubsub,
            message_id,
            topic,
            reason,
            parking,
            extra={
                "message_id": message_id,
                "pubsub": self._pubsub,
                "topic": topic,
                "outcome": "parked",
                "reason": reason,
                "deliveries": deliveries,
                "parking_stream": parking,
            },
        )
        if self._metrics is not None:
            self._metrics.parked(self._pubsub, topic)
