"""Chat pairs keep the whole conversation; training hyper-parameters resolve config > the
model directory's manifest > pretrained-safe defaults."""

from pathlib import Path

from common.model_dir import ModelManifest, TrainingDefaults
from feedback import EscalationEvent, EventMessage
from retrain import PRETRAINED_TRAINING, DistillConfig, Pair, load_pairs, save_pairs
from retrain._derive import even_layers

CHAT = (
    ("system", "You are a support assistant."),
    ("user", "Hi"),
    ("assistant", "Hello!"),
    ("user", "Order?"),
)


def test_a_chat_event_becomes_a_pair_with_every_turn():
    event = EscalationEvent(
        request_id="r1",
        messages=tuple(EventMessage(role=r, content=c) for r, c in CHAT),
        teacher_answer="The order number is 1.",
        skill="order_number",
    )
    pair = Pair.from_event(event, "The order number is 1.")
    assert pair.messages == CHAT
    assert pair.prompt == "Order?"  # the last user turn, for drift and labels only
    request = pair.to_request(24)
    assert request.messages is not None and [t.role for t in request.messages] == [r for r, _ in CHAT]


def test_the_same_last_turn_in_another_conversation_is_another_prompt():
    a = Pair("Order?", "x", messages=CHAT)
    b = Pair("Order?", "x", messages=(("system", "Other app."), ("user", "Order?")))
    assert a.key != b.key
    assert Pair("p", "x").key == "p"


def test_pairs_round_trip_through_jsonl(tmp_path: Path):
    pairs = [Pair("Order?", "1", "order_number", "replay", CHAT), Pair("reverse: abc =", "cba", "reverse")]
    save_pairs(pairs, tmp_path / "p.jsonl")
    back = load_pairs(tmp_path / "p.jsonl", "replay")
    assert [(p.prompt, p.completion, p.skill, p.messages) for p in back] == [
        (p.prompt, p.completion, p.skill, p.messages) for p in pairs
    ]


def test_training_fields_come_from_config_then_the_model_dir_then_safe_defaults(tmp_path: Path):
    assert DistillConfig().resolved(None).learning_rate == PRETRAINED_TRAINING.learning_rate
    ModelManifest(version="v", training=TrainingDefaults(steps=600, learning_rate=1e-3)).save(tmp_path)
    own = DistillConfig().resolved(tmp_path)
    assert (own.steps, own.learning_rate) == (600, 1e-3)
    assert own.batch_size == PRETRAINED_TRAINING.batch_size  # not in the manifest
    assert DistillConfig(learning_rate=5e-5).resolved(tmp_path).learning_rate == 5e-5


def test_even_layers_keep_the_first_and_the_last():
    assert even_layers(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert even_layers(4, 4) == [0, 1, 2, 3]
    assert even_layers(30, 1) == [0]
