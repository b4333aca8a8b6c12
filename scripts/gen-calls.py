#!/usr/bin/env python3
"""Print N synthetic Outreach Call create documents as NDJSON, one per line.

    scripts/gen-calls.py 100000 > calls.ndjson
    callledger import calls.ndjson

Each line is a JSON:API document for a call with realistic attributes
(about 400 bytes). Output depends only on N, --seed and --prospects, so runs
are reproducible. Attributes owned by telephony (state, uid,
voicemailRecordingUrl) or set by the server (createdAt, updatedAt,
stateChangedAt) are never included. Standard library only.
"""

import argparse
import json
import random
import sys
from datetime import datetime, timedelta, timezone

TAGS = ["Interested", "Meeting Booked", "Follow Up", "Not Interested"]
SEQUENCE_ACTIONS = ["Advance", "Finish", "Finish - No Reply", "Finish - Replied"]
AREA_CODES = ["212", "312", "415", "512", "617", "646", "206", "303", "404", "702", "718", "919"]
FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Luis"]
TOPICS = [
    "pricing for the enterprise tier",
    "the Q3 renewal",
    "an integration with their CRM",
    "onboarding timelines",
    "security review questions",
    "a pilot for the support team",
    "budget approval next quarter",
    "migrating from their current vendor",
]
NEXT_STEPS = [
    "Send the case study and follow up Thursday.",
    "Booked a demo with the VP of Sales for next week.",
    "Asked to be contacted again after their planning cycle.",
    "Wants a proposal with annual billing.",
    "Loop in their IT lead before the next call.",
    "No further interest for now; revisit in six months.",
]
UNANSWERED_NOTES = [
    "No answer, no voicemail left.",
    "Rang out; will retry tomorrow morning.",
    "Went to a full voicemail box.",
    "Line busy twice.",
]
# Calls are spread over 2024.
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
SPAN_SECONDS = 366 * 24 * 3600


def rfc3339(at):
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def phone(rng):
    return "+1%s555%04d" % (rng.choice(AREA_CODES), rng.randrange(10000))


def call(rng, prospects):
    direction = "outbound" if rng.random() < 0.8 else "inbound"
    answered = rng.random() < (0.45 if direction == "outbound" else 0.9)
    rep, prospect_phone = phone(rng), phone(rng)
    dialed = START + timedelta(seconds=rng.randrange(SPAN_SECONDS))
    attributes = {
        "direction": direction,
        "outcome": "Answered" if answered else "Not Answered",
        "from": rep if direction == "outbound" else prospect_phone,
        "to": prospect_phone if direction == "outbound" else rep,
        "dialedAt": rfc3339(dialed),
        "userCallType": "bridge" if rng.random() < 0.3 else "voip",
        "shouldRecordCall": answered and rng.random() < 0.85,
    }
    if answered:
        answered_at = dialed + timedelta(seconds=rng.randint(3, 25))
        completed = answered_at + timedelta(seconds=rng.randint(20, 1800))
        attributes["answeredAt"] = rfc3339(answered_at)
        attributes["note"] = "Spoke with %s about %s. %s" % (
            rng.choice(FIRST),
            rng.choice(TOPICS),
            rng.choice(NEXT_STEPS),
        )
        if attributes["shouldRecordCall"]:
            attributes["recordingUrl"] = "https://recordings.example.com/calls/%s/%032x.mp3" % (
                dialed.strftime("%Y/%m/%d"),
                rng.getrandbits(128),
            )
        attributes["tags"] = sorted(rng.sample(TAGS, rng.choice([0, 1, 1, 2])))
    else:
        completed = dialed + timedelta(seconds=rng.randint(20, 45))
        attributes["note"] = rng.choice(UNANSWERED_NOTES)
        attributes["tags"] = ["Follow Up"] if rng.random() < 0.3 else []
    attributes["completedAt"] = rfc3339(completed)
    if direction == "outbound" and rng.random() < 0.7:
        attributes["sequenceAction"] = rng.choice(SEQUENCE_ACTIONS)
    return {
        "data": {
            "type": "call",
            "attributes": attributes,
            "relationships": {
                "prospect": {"data": {"type": "prospect", "id": rng.randint(1, prospects)}}
            },
        }
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int, help="how many calls to print")
    parser.add_argument("--seed", type=int, default=20240101, help="random seed (default %(default)s)")
    parser.add_argument(
        "--prospects",
        type=int,
        default=None,
        help="how many distinct prospects the calls go to (default: count / 5, at least 1)",
    )
    args = parser.parse_args()
    if args.count < 0:
        parser.error("count must not be negative")
    prospects = args.prospects or max(1, args.count // 5)
    rng = random.Random(args.seed)
    out = sys.stdout
    for _ in range(args.count):
        out.write(json.dumps(call(rng, prospects), separators=(",", ":")))
        out.write("\n")
    out.flush()


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        # `gen-calls.py 1000000 | head` is fine.
        sys.stderr.close()
        sys.exit(0)
