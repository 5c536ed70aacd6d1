"""The chat template and loss mask: messages -> (token ids, loss mask).

ChatML layout, as Qwen2 uses: `<|im_start|>{role}\n{content}<|im_end|>\n` per message. With
`loss_on="assistant"` (SFT) only assistant contents and their closing `<|im_end|>` are trained on;
with `loss_on="all"` (pre-training style) every token is. Plain text (role "text") is the text
followed by the end-of-text token, all trained on.
"""

from __future__ import annotations

import numpy as np

from mixjax.data.tokenizer import IM_END, IM_START

LOSS_ON = ("assistant", "all")


def render(messages: list[dict[str, str]], tokenizer, loss_on: str = "assistant"):
    """Token ids (int32) and loss mask (bool) for one example."""
    tokens, mask = [], []

    def add(text: str, trained: bool):
        ids = tokenizer.encode(text)
        tokens.append(ids)
        mask.append(np.full(len(ids), trained or loss_on == "all", bool))

    for m in messages:
        if m["role"] == "text":
            add(m["content"], True)
            if tokenizer.eos_id is not None:
                tokens.append(np.array([tokenizer.eos_id], np.int32))
                mask.append(np.ones(1, bool))
            continue
        is_assistant = m["role"] == "assistant"
        add(f"{IM_START}{m['role']}\n", False)
        add(f"{m['content']}{IM_END}", is_assistant)
        add("\n", False)
    if not tokens:
        return np.zeros(0, np.int32), np.zeros(0, bool)
    return np.concatenate(tokens).astype(np.int32), np.concatenate(mask)
