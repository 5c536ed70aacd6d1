"""Tokenizers: byte-level (needs no files) or an HF `tokenizer.json` from a local directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from mixjax.errors import MixjaxError

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus three specials: <|endoftext|>=256, <|im_start|>=257, <|im_end|>=258."""

    kind = "byte"
    SPECIALS = {END_OF_TEXT: 256, IM_START: 257, IM_END: 258}

    def __init__(self):
        self.vocab_size = 259
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self.SPECIALS) + ")")
        self.eos_id = self.SPECIALS[END_OF_TEXT]

    def encode(self, text: str) -> np.ndarray:
        parts = []
        for piece in self._split.split(text):
            if piece in self.SPECIALS:
                parts.append(np.array([self.SPECIALS[piece]], np.int32))
            elif piece:
                parts.append(np.frombuffer(piece.encode("utf-8"), np.uint8).astype(np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def decode(self, ids) -> str:
        inverse = {v: k for k, v in self.SPECIALS.items()}
        out, buf = [], bytearray()
        for i in np.asarray(ids).tolist():
            if i < 256:
                buf.append(i)
            else:
                out.append(buf.decode("utf-8", "replace"))
                buf = bytearray()
                out.append(inverse.get(i, ""))
        out.append(buf.decode("utf-8", "replace"))
        return "".join(out)

    def spec(self) -> dict:
        return {"kind": "byte", "vocab_size": self.vocab_size}


class HFTokenizer:
    """An HF `tokenizers` tokenizer loaded from `DIR/tokenizer.json` (no network, no transformers)."""

    kind = "hf"

    def __init__(self, directory: str | Path):
        from tokenizers import Tokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json" if directory.is_dir() else directory
        if not path.is_file():
            raise MixjaxError(f"`tokenizer`: {path} not found (expected a directory with tokenizer.json)")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise MixjaxError(f"`tokenizer`: {path} is not a valid tokenizer.json ({e})") from None
        self.path = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._eos_id(path.parent)

    def _eos_id(self, directory: Path) -> int | None:
        config = directory / "tokenizer_config.json"
        if config.is_file():
            eos = json.loads(config.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if eos and self._tok.token_to_id(eos) is not None:
                return self._tok.token_to_id(eos)
        return self._tok.token_to_id(END_OF_TEXT)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def spec(self) -> dict:
        from mixjax.data.sources import file_sha256

        return {"kind": "hf", "path": str(self.path.resolve()), "sha256": file_sha256(self.path),
                "vocab_size": self.vocab_size}


def load_tokenizer(spec: str | None):
    """`byte` (default) or a directory / tokenizer.json path."""
    if spec in (None, "", "byte"):
        return ByteTokenizer()
    return HFTokenizer(spec)
