"""Each answer is stamped with the threshold calibrated for its request's route, else its
output kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.model_dir import CalibrationRecord
from router import Generation, GenerationRequest
from router._contract import canonical_json
from router._slots import BackendSlots, Slot
from router._types import ResponseFormat, ToolSpec
from tests.fakes.clients import make_generation

TEXT = GenerationRequest(prompt="reverse: abc =")
JSON = GenerationRequest(prompt="as JSON:", response_format=ResponseFormat(type="json_object"))
TOOLS = GenerationRequest(
    prompt="call:", tools=(ToolSpec(name="f", parameters=canonical_json({"type": "object"})),)
)
CALIBRATION = CalibrationRecord(scorer="mean_logprob", threshold=0.97, agreement=0.99, by_kind={"json": 0.6})


class _Backend:
    model_id = "m"
    version = "v1"
    max_context = 512

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return 3

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [make_generation("x", version=self.version) for _ in requests]

    async def close(self) -> None:
        pass


def test_stamp_picks_the_threshold_of_each_requests_kind():
    slot = Slot(_Backend(), Path("v1"), CALIBRATION)
    requests = [TEXT, JSON, TOOLS]
    gens = slot.stamp(requests, [make_generation("x") for _ in requests], None)
    assert [g.calibrated_threshold for g in gens] == [0.97, 0.6, 0.97]  # tool_call: not calibrated
    assert {g.calibrated_agreement for g in gens} == {0.99}


async def test_backend_slots_stamp_a_mixed_batch_per_kind():
    slots = BackendSlots(Slot(_Backend(), Path("v1"), CALIBRATION), lambda _: _Backend(), tier="student")
    gens = await slots.generate(slots.current, [JSON, TEXT])
    assert [g.calibrated_threshold for g in gens] == [0.6, 0.97]
    slots.threshold_override = 0.5
    (pinned,) = await slots.generate(slots.current, [JSON])
    assert (pinned.calibrated_threshold, pinned.threshold_override) == (0.6, 0.5)


def test_a_routes_own_threshold_wins_over_its_kinds_and_an_uncalibrated_route_falls_back():
    calibration = CALIBRATION.model_copy(update={"by_route": {"reverse": 0.8, "extract": 0.4}})
    slot = Slot(_Backend(), Path("v1"), calibration)
    requests = [
        TEXT.model_copy(update={"route": "reverse"}),
        JSON.model_copy(update={"route": "extract"}),
        JSON.model_copy(update={"route": "never-calibrated"}),
        TEXT,  # no route at all
    ]
    gens = slot.stamp(requests, [make_generation("x") for _ in requests], None)
    assert [g.calibrated_threshold for g in gens] == [0.8, 0.4, 0.6, 0.97]


def test_a_slot_without_calibration_stamps_nothing():
    slot = Slot(_Backend(), Path("v1"), None)
    gens = [make_generation("x")]
    assert slot.stamp([JSON], gens, None) is gens
