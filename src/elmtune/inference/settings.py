"""Decoding settings of ``elmtune generate`` and ``elmtune chat``: one frozen dataclass, checked once (no torch).

Greedy decoding is the default. A positive ``temperature`` switches to sampling, which ``top_p``, ``top_k`` and
``seed`` then shape; ``repetition_penalty`` applies to both.
"""

from __future__ import annotations

from dataclasses import dataclass

from elmtune.config_mapping import require

SECTION = "generation"
"""Dotted prefix of the keys in messages (``generation.top_p``)."""


@dataclass(frozen=True)
class DecodingSettings:
    """How replies are decoded.

    Attributes:
        max_new_tokens: The most tokens generated per reply; generation stops earlier at EOS.
        temperature: 0 for greedy decoding (argmax at every step); above 0, sampling at this temperature.
        top_p: Nucleus sampling: keep the smallest set of tokens whose probabilities add up to ``top_p`` (1: off).
        top_k: Keep only the ``top_k`` most likely tokens when sampling (0: off).
        repetition_penalty: CTRL's penalty on tokens already in the prompt or reply (1: off); greedy or sampled.
        seed: Seed of the sampling random numbers, for a reproducible reply; None draws from the current state.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        sampling = self.temperature > 0
        require(
            SECTION,
            [
                (self.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1, not {self.max_new_tokens}"),
                (self.temperature >= 0, "temperature", f"must be 0 (greedy) or positive, not {self.temperature}"),
                (0 < self.top_p <= 1, "top_p", f"must be in (0, 1], not {self.top_p}"),
                (self.top_k >= 0, "top_k", f"must be 0 (off) or positive, not {self.top_k}"),
                (self.repetition_penalty > 0, "repetition_penalty", f"must be positive, not {self.repetition_penalty}"),
                (sampling or self.top_p == 1, "top_p", "needs sampling: give a temperature above 0"),
                (sampling or self.top_k == 0, "top_k", "needs sampling: give a temperature above 0"),
                (sampling or self.seed is None, "seed", "needs sampling: give a temperature above 0"),
            ],
        )

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled (a positive temperature) rather than chosen greedily."""
        return self.temperature > 0


__all__ = ["DecodingSettings"]
