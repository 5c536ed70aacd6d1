"""Tokenisers and the chat template's loss mask."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mixjax.data.template import render
from mixjax.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from mixjax.errors import MixjaxError

CHAT = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "ok!"}]


def test_byte_round_trip_with_specials_and_unicode():
    tok = ByteTokenizer()
    text = "<|im_start|>user\nnaïve ☃<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == 257 and ids[-1] == 258 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text


def test_loss_mask_covers_exactly_assistant_contents_and_their_end_markers():
    tok = ByteTokenizer()
    ids, mask = render(CHAT, tok, "assistant")
    assert len(ids) == len(mask)
    trained = tok.decode(ids[mask])
    assert trained == "yo<|im_end|>ok!<|im_end|>"
    # the untrained part is the prompt side, in order
    assert tok.decode(ids[~mask]) == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                                      "<|im_start|>assistant\n\n<|im_start|>user\nq<|im_end|>\n"
                                      "<|im_start|>assistant\n\n")


def test_loss_on_all_and_plain_text():
    tok = ByteTokenizer()
    ids, mask = render(CHAT, tok, "all")
    assert mask.all()
    ids, mask = render([{"role": "text", "content": "abc"}], tok, "assistant")
    assert ids.tolist() == [97, 98, 99, 256] and mask.all()


def _word_tokenizer(directory):
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|endoftext|>": 3,
             "user": 4, "assistant": 5, "hi": 6, "yo": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    directory.mkdir(exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def test_hf_tokenizer_from_directory(tmp_path):
    tok = load_tokenizer(str(_word_tokenizer(tmp_path / "tok")))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 8 and tok.eos_id == 3
    ids, mask = render(CHAT[1:3], tok, "assistant")
    assert ids.tolist() == [1, 4, 6, 2, 1, 5, 7, 2]
    assert ids[mask].tolist() == [7, 2]
    assert tok.spec()["kind"] == "hf" and len(tok.spec()["sha256"]) == 64


def test_hf_tokenizer_missing_file(tmp_path):
    with pytest.raises(MixjaxError, match="tokenizer: .*tokenizer.json not found"):
        load_tokenizer(str(tmp_path))
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    np.testing.assert_array_equal(ByteTokenizer().encode(""), np.zeros(0, np.int32))
