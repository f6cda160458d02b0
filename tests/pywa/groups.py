"""Drives the WhatsApp simulator with pywa (a real third-party Cloud API client, unmodified).

Usage: groups.py SIM_URL TOKEN PHONE_NUMBER_ID CONTROL_URL
pywa always talks to graph.facebook.com; an httpx request hook (public httpx API, passed through
pywa's public `session` parameter) sends those requests to the simulator instead.
Prints one JSON line per step; exits non-zero on the first failure.
"""

import json
import sys
import time
import urllib.request

import httpx
from pywa import WhatsApp
from pywa.types.groups import GroupJoinApprovalMode


def main(sim_url, token, phone_id, control_url):
    sim = httpx.URL(sim_url)

    def to_simulator(request):
        request.url = request.url.copy_with(scheme=sim.scheme, host=sim.host, port=sim.port)

    session = httpx.Client(event_hooks={"request": [to_simulator]}, timeout=10)
    wa = WhatsApp(phone_id=phone_id, token=token, session=session, api_version="23.0")

    def control(path, body=None):
        req = urllib.request.Request(
            control_url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def step(name, value):
        print(json.dumps({"step": name, "value": value}), flush=True)

    op = wa.create_group(
        subject="pywa team",
        description="made by pywa",
        join_approval_mode=GroupJoinApprovalMode.APPROVAL_REQUIRED,
    )
    step("created", op.request_id)
    # The group id arrives in the group_create webhook; the control API shows the same group.
    # (pywa 4.5's get_groups() reads `data` as a flat list, while Meta's docs and spec nest it as
    # `data.groups`, which the simulator follows; so the id is not taken from get_groups().)
    group_id = [g for g in control("/_sandbox/wa/groups") if g["subject"] == "pywa team"][0]["id"]
    step("group", group_id)
    link = wa.get_group_invite_link(group_id).link
    step("link", link)
    tapped = control("/_sandbox/wa/phones/447911123456/tap", {"link": link})
    step("tapped", tapped["result"])
    requests = wa.get_group_join_requests(group_id)
    ids = [r.id for r in requests]
    step("requests", ids)
    wa.approve_group_join_requests(group_id, ids)
    step("approved", control(f"/_sandbox/wa/groups/{group_id}")["participants"])
    control("/_sandbox/wa/phones/447911123456/messages", {"to": group_id, "text": "hi from the phone"})
    sent = wa.send_message(to=group_id, text="hello group, from pywa")
    step("sent", sent.id)
    wa.remove_group_participants(group_id, ["447911123456"])
    group = control(f"/_sandbox/wa/groups/{group_id}")
    step("removed", {"participants": group["participants"], "removed": group["removed"]})
    inbox = control("/_sandbox/wa/phones/447911123456/inbox")
    step("inbox", [m["text"] for m in inbox])


if __name__ == "__main__":
    main(*sys.argv[1:5])
