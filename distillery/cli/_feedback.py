"""``distillery feedback consume|replay-spool`` and ``distillery keys new``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from distillery._stack import LocalStack, with_bootstrap
from distillery.settings import DistillerySettings

__all__ = ["add_feedback_commands", "add_keys_commands"]


def cmd_replay_spool(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """Sends one spool directory's events to Kafka (an orphaned replica's spool slot)."""
    import fcntl

    from feedback import DiskSpool, EscalationProducer

    bootstrap = args.bootstrap or settings.feedback.kafka.bootstrap
    if not bootstrap:
        print("set DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP or --bootstrap", file=sys.stderr)
        return 2
    directory = Path(args.spool_dir)
    if not directory.is_dir():
        print(f"{directory} is not a spool directory", file=sys.stderr)
        return 2
    # The same advisory lock a live producer holds on its slot (claim_spool_dir).
    with (directory / ".owner").open("ab") as owner:
        try:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"{directory} belongs to a running producer, which re-sends it itself", file=sys.stderr)
            return 2
        spool = DiskSpool(directory)
        events = spool.depth
        producer = EscalationProducer(settings.feedback, bootstrap, spool).start()
        delivered = producer.flush(args.timeout)
        producer.close()
        left = DiskSpool(directory).depth
    print(json.dumps({"spool": str(directory), "events": events, "sent": events - left, "left": left}))
    return 0 if delivered and left == 0 else 1


def cmd_feedback_consume(args: argparse.Namespace, settings: DistillerySettings) -> int:
    if args.bootstrap:
        settings = with_bootstrap(settings, args.bootstrap)
    if not settings.feedback.kafka.bootstrap:
        print("set DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP or --bootstrap", file=sys.stderr)
        return 2
    stack = LocalStack(settings, broker=False, serve=False, metrics_port=args.metrics_port)
    with stack:
        print(f"consuming {settings.feedback.kafka.topic} into {settings.store_dsn}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_keys_new(args: argparse.Namespace, settings: DistillerySettings) -> int:
    from gateway.auth import ApiKey, hash_key, new_key

    key = new_key()
    entry = ApiKey(name=args.name, sha256=hash_key(key), scopes=args.scopes or ["inference"])
    print(f"key (shown once; give it to {entry.name}, store it in a secret manager): {key}")
    print("config entry (auth.keys in the YAML, or DISTILLERY_AUTH__KEYS as a JSON list):")
    print(json.dumps(entry.model_dump(exclude_none=True)))
    return 0


def add_feedback_commands(sub: Any) -> None:
    fb = sub.add_parser("feedback", help="the feedback stream").add_subparsers(dest="fb_cmd", required=True)
    consume = fb.add_parser("consume", help="consume escalation events into the feedback store")
    consume.add_argument("--bootstrap", help="Kafka bootstrap servers (else from settings)")
    consume.add_argument("--metrics-port", type=int, default=9101)
    consume.set_defaults(fn=cmd_feedback_consume)
    replay = fb.add_parser("replay-spool", help="send an orphaned spool directory's events to Kafka")
    replay.add_argument("spool_dir", help="one spool slot, e.g. var/spool/3")
    replay.add_argument("--bootstrap", help="Kafka bootstrap servers (else from settings)")
    replay.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for acks")
    replay.set_defaults(fn=cmd_replay_spool)


def add_keys_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    new_key = keys.add_parser("new", help="make a key; prints it once, and the config entry (digest only)")
    new_key.add_argument("--name", required=True)
    new_key.add_argument("--scope", action="append", choices=["inference", "admin"], dest="scopes")
    new_key.set_defaults(fn=cmd_keys_new)
