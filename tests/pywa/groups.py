"""Drives the WhatsApp simulator with pywa (a real third-party Cloud API client, unmodified),
through every Groups call pywa offers.

Usage: groups.py SIM_URL TOKEN PHONE_NUMBER_ID CONTROL_URL
pywa always talks to graph.facebook.com; an httpx request hook (public httpx API, passed through
pywa's public `session` parameter) sends those requests to the simulator instead, and a response
hook records each call's status. Prints one JSON line per step; exits non-zero on the first
failure (a step that is expected to fail records its error instead).
"""

import json
import sys
import urllib.request

import httpx
from pywa import WhatsApp
from pywa.types.groups import GroupJoinApprovalMode

ANN = "447911123456"  # approved, then removed by phone number
BEN = "447911123457"  # rejected
CAT = "447911123458"  # a username user: known by BSUID only, approved, then removed by BSUID


def jpeg(side):
    """The frame header of a square JPEG: what the simulator reads of a picture."""
    sof = bytes([0xFF, 0xC0, 0x00, 0x11, 0x08]) + side.to_bytes(2, "big") * 2 + bytes(12)
    return b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


def main(sim_url, token, phone_id, control_url):
    sim = httpx.URL(sim_url)
    calls = []

    def to_simulator(request):
        request.url = request.url.copy_with(scheme=sim.scheme, host=sim.host, port=sim.port)

    def record(response):
        path = "/".join(response.request.url.path.split("/")[2:])
        calls.append(
            {
                "method": response.request.method,
                "path": path,
                "status": response.status_code,
                "type": response.request.headers.get("content-type", "").split(";")[0],
            }
        )

    session = httpx.Client(
        event_hooks={"request": [to_simulator], "response": [record]}, timeout=10
    )
    wa = WhatsApp(phone_id=phone_id, token=token, session=session, api_version="23.0")

    def control(path, body=None, method=None):
        req = urllib.request.Request(
            control_url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method=method or ("GET" if body is None else "POST"),
        )
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def step(name, value):
        print(json.dumps({"step": name, "value": value}), flush=True)

    def last_call():
        return calls[-1]

    cat = control(f"/_sandbox/wa/phones/{CAT}", {"name": "Cat", "username": "cat.doe"}, "PUT")
    step("cat", cat["userId"])

    op = wa.create_group(
        subject="pywa team",
        description="made by pywa",
        join_approval_mode=GroupJoinApprovalMode.APPROVAL_REQUIRED,
    )
    step("created", op.request_id)
    # The group id arrives in the group_create webhook; the control API shows the same group.
    group_id = [g for g in control("/_sandbox/wa/groups") if g["subject"] == "pywa team"][0]["id"]
    step("group", group_id)

    # get_groups: Meta's docs and spec nest the list as `data.groups`, which the simulator
    # follows; pywa 4.5 reads `data` as a flat list and cannot build its result from that. The
    # raw call (pywa's own API layer) shows what the simulator answered.
    raw = wa.api.get_active_groups(phone_id=phone_id)
    step("list_raw", [g["id"] for g in raw["data"]["groups"]])
    try:
        listed = [g.id for g in wa.get_groups()]
        step("list", {"ok": listed})
    except Exception as e:  # noqa: BLE001 - the failure is what this step records
        step("list", {"error": type(e).__name__})

    link = wa.get_group_invite_link(group_id).link
    step("link", link)
    step("tapped", [control(f"/_sandbox/wa/phones/{p}/tap", {"link": link})["result"] for p in (ANN, BEN, CAT)])
    requests = list(wa.get_group_join_requests(group_id))
    by_user = {r.user.wa_id or r.user.bsuid: r.id for r in requests}
    step("requests", [{"wa_id": r.user.wa_id, "bsuid": r.user.bsuid} for r in requests])

    wa.approve_group_join_requests(group_id, [by_user[ANN], by_user[cat["userId"]]])
    step("approved", {"status": last_call()["status"], "participants": control(f"/_sandbox/wa/groups/{group_id}")["participants"]})
    rejected = wa.reject_group_join_requests(group_id, [by_user[BEN], "no-such-request"])
    step("rejected", {"status": last_call()["status"], "request_id": rejected.request_id, "pending": control(f"/_sandbox/wa/groups/{group_id}")["pendingRequests"]})

    details = wa.get_group(group_id)
    step(
        "details",
        {
            "id": details.id,
            "subject": details.subject,
            "description": details.description,
            "mode": str(details.join_approval_mode),
            "suspended": details.suspended,
            "count": details.total_participant_count,
            "participants": sorted([[p.wa_id, p.bsuid] for p in details.participants], key=str),
        },
    )

    settings = wa.update_group_settings(
        group_id, subject="pywa team (renamed)", description="renamed by pywa", profile_picture=jpeg(640)
    )
    step("settings", {"request_id": settings.request_id, "type": last_call()["type"], "status": last_call()["status"]})
    step("renamed", wa.get_group(group_id).subject)

    control(f"/_sandbox/wa/phones/{ANN}/messages", {"to": group_id, "text": "hi from the phone"})
    sent = wa.send_message(to=group_id, text="hello group, from pywa")
    step("sent", sent.id)

    wa.pin_message(group_id, sent.id, expiration_days=7)
    pinned = control(f"/_sandbox/wa/groups/{group_id}")["pinned"]
    wa.unpin_message(group_id, sent.id)
    try:
        wa.pin_message(group_id, "wamid.not-in-this-group", expiration_days=7)
        refused = None
    except Exception as e:  # noqa: BLE001 - the refusal is what this step records
        refused = getattr(e, "code", type(e).__name__)
    step("pin", {"pinned": pinned == [sent.id], "after_unpin": control(f"/_sandbox/wa/groups/{group_id}")["pinned"], "refused": refused})

    new_link = wa.reset_group_invite_link(group_id).link
    old = control(f"/_sandbox/wa/phones/{BEN}/tap", {"link": link})
    step("reset", {"changed": new_link != link, "old_link": old["result"], "current": wa.get_group_invite_link(group_id).link == new_link})

    removed = wa.remove_group_participants(group_id, [ANN, cat["userId"]])
    group = control(f"/_sandbox/wa/groups/{group_id}")
    step("removed", {"request_id": removed.request_id, "participants": group["participants"], "removed": group["removed"]})
    inbox = control(f"/_sandbox/wa/phones/{ANN}/inbox")
    step("inbox", [m["text"] for m in inbox])

    deleted = wa.delete_group(group_id)
    step("deleted", {"request_id": deleted.request_id, "active": control(f"/_sandbox/wa/groups/{group_id}")["active"]})
    step("calls", calls)


if __name__ == "__main__":
    main(*sys.argv[1:5])
