"""A character-level Hugging Face tokenizer for the demo models, built without a hub.

Skill tags are added tokens so each costs one position; everything else is one token per
character. It is saved as a standard ``tokenizer.json`` so transformers and vLLM load it
like any other model directory.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from demo._domain import ALL_SKILLS

__all__ = ["CHAT_TEMPLATE", "build_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

# The demo models are not chat models: a conversation is rendered as its last user turn,
# which is exactly the completion prompt. A real model directory brings its own template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.last and message['role'] == 'user' %}"
    "{{ message['content'] }}{% endif %}{% endfor %}"
)


def _vocab() -> dict[str, int]:
    symbols = [PAD, BOS, EOS, UNK]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits
    chars += " =:.,;!?-+*/()'\"\n"
    symbols += list(dict.fromkeys(chars))
    symbols += [f"{s.name}:" for s in ALL_SKILLS]
    return {tok: i for i, tok in enumerate(symbols)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = _vocab()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([PAD, BOS, EOS, UNK])
    core.add_tokens([f"{s.name}:" for s in ALL_SKILLS])
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(path: Path) -> None:
    build_tokenizer().save_pretrained(str(path))
