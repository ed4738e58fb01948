"""The named model sizes; :mod:`tabbert.models.configuration` describes them.

A module of its own so that the command line can list the sizes without importing transformers.
"""

from __future__ import annotations

from typing import Any

MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        field_hidden=8, field_num_heads=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ),
    "small": dict(
        field_hidden=32, field_num_heads=2, hidden_size=256,
        num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
    ),
    "paper": dict(
        field_hidden=64, field_num_heads=8, hidden_size=None,
        num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    ),
}
