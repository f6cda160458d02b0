"""An ordinary bot written with the official Symphony Python BDK, unmodified: it logs in,
runs its Datafeed v2 loop and answers every message with "echo: <text>".

Usage: echo_bot.py CONFIG_YAML
It prints READY once its datafeed loop is about to start, and stops after answering one message
or after 60 seconds.
"""

import asyncio
import sys

from symphony.bdk.core.config.loader import BdkConfigLoader
from symphony.bdk.core.service.datafeed.real_time_event_listener import RealTimeEventListener
from symphony.bdk.core.service.message.message_parser import get_text_content_from_message
from symphony.bdk.core.symphony_bdk import SymphonyBdk


class Echo(RealTimeEventListener):
    def __init__(self, bdk, done):
        self._bdk = bdk
        self._done = done

    async def on_message_sent(self, initiator, event):
        text = get_text_content_from_message(event.message)
        await self._bdk.messages().send_message(
            event.message.stream.stream_id, f"<messageML>echo: {text}</messageML>"
        )
        self._done.set()


async def main(config_path):
    config = BdkConfigLoader.load_from_file(config_path)
    async with SymphonyBdk(config) as bdk:
        session = await bdk.sessions().get_session()
        print(f"LOGGED_IN {session.id}", flush=True)
        done = asyncio.Event()
        loop = bdk.datafeed()
        loop.subscribe(Echo(bdk, done))
        task = asyncio.create_task(loop.start())
        print("READY", flush=True)
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        finally:
            await loop.stop()
            try:
                await asyncio.wait_for(task, timeout=10)
            except Exception:  # the loop may end with a cancellation
                pass
        print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
