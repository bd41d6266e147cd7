import shlex
from pathlib import Path

import yaml

from distillery.cli import _parser

ROOT = Path(__file__).resolve().parents[3]


def test_nightly_cronjob_runs_a_real_cli_command_daily():
    doc = yaml.safe_load((ROOT / "deploy" / "k8s" / "nightly-refresh-cronjob.yaml").read_text())
    assert doc["kind"] == "CronJob" and doc["spec"]["schedule"] == "0 3 * * *"
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[0] == "distillery"
    args = _parser().parse_args(command[1:])
    assert args.fn.__name__ == "cmd_loop" and args.once
    env = {e["name"] for e in container["env"]}
    assert {
        "DISTILLERY_CONTROL_STORE",
        "DISTILLERY_REGISTRY_URL",
        "DISTILLERY_NODE_ROLES__TRAINER",
        "DISTILLERY_FEEDBACK__STORE_DSN",
        "RAY_ADDRESS",
    } <= env
    assert shlex.join(command) == "distillery loop --once"
