"""``retrain.frozen_layers``: what a refresh leaves untrained."""

from __future__ import annotations

import pytest

from retrain._train import freeze_lower


def tiny_llama(layers: int = 3, tied: bool = True):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


def trainable(module) -> bool:  # type: ignore[no-untyped-def]
    return any(p.requires_grad for p in module.parameters())


def test_the_embeddings_and_the_lowest_layers_stop_training_and_the_rest_train() -> None:
    model = tiny_llama(layers=3)
    freeze_lower(model, 2)
    layers = model.get_decoder().layers
    assert not trainable(model.get_input_embeddings())
    assert not trainable(model.get_output_embeddings())  # tied to the embeddings
    assert [trainable(layer) for layer in layers] == [False, False, True]
    assert trainable(model.get_decoder().norm)


def test_an_untied_head_keeps_training() -> None:
    model = tiny_llama(layers=2, tied=False)
    freeze_lower(model, 1)
    assert trainable(model.get_output_embeddings())


def test_freezing_every_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="none of the student's 2 layers"):
        freeze_lower(tiny_llama(layers=2), 2)
