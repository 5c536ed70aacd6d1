"""A li2025 law with parameters in the paper's ranges (token unit 1e6), as a hand-written law file
would give them; the tests simulate runs from it and check what the fit and optimiser recover."""

from __future__ import annotations

import copy

PAPER_LIKE = {
    "law": "li2025",
    "domains": ["if", "math", "code"],
    "token_unit": 1000000,
    "params": {
        "C": [3.0, 2.5, 2.8],
        "k": [0.5, 0.3, 0.4],
        "alpha": [0.5, 0.6, 0.4],
        "beta": [0.3, 0.4, 0.35],
        "E": [1.0, 0.6, 0.8],
    },
}


def paper_like_law(law_name: str = "li2025"):
    """The law file above, loaded (optionally read as another law with the same fields)."""
    from mixjax.laws import FittedLaw

    return FittedLaw.from_json({**copy.deepcopy(PAPER_LIKE), "law": law_name})
