"""What the usual intake costs by SMS: each message the customer gets, as the SMS channel
renders it (channels/sms_render.py), with its encoding and segment count.

    .venv/bin/python bench/sms_segments.py [--plan 1] [--vin | --ymm] [--verbose]

The intake runs through the real engine and flows on a throwaway SQLite database (offline
payments, public_url as config.toml has it, so the payment link is the /pay/ page's; a
Stripe Checkout URL is about 130 characters longer: one more segment). The answers are typed
as an SMS customer would ("1", a name, the VIN, "84000", a problem description, "skip", "1",
"agree"). Also
printed: the offer a mechanic gets and the end-of-session rating prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bot.app import build_runtime
from bot.flows import route
from channels.sms_render import encoding, render, segment_count
from core.config import load_config
from core.db import create_engine
from core.engine import Engine
from core.messages import Button, Inbound, Outbound
from core.models import Base

VIN = "1HGCM82633A004352"
PROBLEM = ("Grinding noise from the front left wheel when braking, worse in the morning; "
           "the brake warning light came on yesterday")


def describe(out: Outbound, max_segments: int) -> tuple[int, str]:
    rendered = render(out, max_segments)
    count = sum(segment_count(body) for body in rendered.bodies)
    kinds = ",".join(sorted({encoding(body) for body in rendered.bodies}))
    return count, kinds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ymm", action="store_true", help="no VIN: year, make and model")
    parser.add_argument("--verbose", action="store_true", help="print each message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(environ={"AUTODOCTOR_SECRET_KEY": "bench"},
                             data_dir=Path(folder))
        engine = create_engine(f"sqlite+aiosqlite:///{folder}/bench.db")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        runtime = build_runtime(config, engine)
        conversation = Engine(runtime, route)
        vehicle = ["no vin", "2015 Honda Civic"] if args.ymm else [VIN]
        answers = ["Hi", "1", "Dana", *vehicle, "84000", PROBLEM, "skip", "1", "agree"]
        total = 0
        print(f"{'answer':<22} {'segments':>8}  encoding  first line")
        for answer in answers:
            replies = await conversation.receive(Inbound(channel="sms", address="+15551230001",
                                                         text=answer))
            for out in replies:
                count, kinds = describe(out, config.sms.max_segments)
                total += count
                first = out.text.splitlines()[0][:48]
                print(f"{answer[:22]:<22} {count:>8}  {kinds:<8}  {first}")
                if args.verbose:
                    print("    " + "\n    ".join(render(out, 10).bodies[0].splitlines()))
        print(f"usual intake: {total} segments in all")
        await engine.dispose()
        offer = Outbound("sms", "+15552220001", runtime.texts(
            "offer", request=_Ref("R-4821"), plan=config.plan("chat10"), intake=_Intake(),
            files=0, payout_cents=799, customer_name="Dana"),
            buttons=(Button("Accept", "accept:R-4821"),))
        count, kinds = describe(offer, config.sms.max_segments)
        print(f"mechanic's offer: {count} segments ({kinds})")


class _Ref:
    def __init__(self, ref: str) -> None:
        self.ref = ref


class _Intake:
    vin = VIN
    vehicle_year, vehicle_make, vehicle_model = 2003, "Honda", None
    odometer, odometer_unit = 84000, "mi"
    problem = PROBLEM


if __name__ == "__main__":
    asyncio.run(main())
