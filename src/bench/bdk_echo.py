"""The echo bot of the official Symphony Python BDK, for `wa-groups-bot bench`: the same bot as
tests/bdk/echo_bot.py (unmodified BDK calls: login, Datafeed v2 loop, send_message), except that
it answers every message with "echo: <text>" until it is stopped, so that a burst can be timed.

Usage: bdk_echo.py CONFIG_YAML
Prints READY once its datafeed loop is about to start.
"""

import asyncio
import sys

from symphony.bdk.core.config.loader import BdkConfigLoader
from symphony.bdk.core.service.datafeed.real_time_event_listener import RealTimeEventListener
from symphony.bdk.core.service.message.message_parser import get_text_content_from_message
from symphony.bdk.core.symphony_bdk import SymphonyBdk


class Echo(RealTimeEventListener):
    def __init__(self, bdk):
        self._bdk = bdk

    async def on_message_sent(self, initiator, event):
        text = get_text_content_from_message(event.message)
        await self._bdk.messages().send_message(
            event.message.stream.stream_id, f"<messageML>echo: {text}</messageML>"
        )


async def main(config_path):
    config = BdkConfigLoader.load_from_file(config_path)
    async with SymphonyBdk(config) as bdk:
        loop = bdk.datafeed()
        loop.subscribe(Echo(bdk))
        print("READY", flush=True)
        await loop.start()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
