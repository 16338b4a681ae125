"""Arithmetic chains: a start number and 2-4 operations, applied left to right.

The numbers are large enough (2-3 digits, products of several of them) that a small model should use the
Python tool rather than compute in its head.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_OP_PHRASES = {"+": "add {n}", "-": "subtract {n}", "*": "multiply by {n}"}
_TEMPLATES = (
    "Start with {start}. {Steps}. What is the result?",
    "Take the number {start}, then {steps}. What number do you get?",
    "Begin at {start}; {steps}. Report the final value.",
)
MIN_OPS, MAX_OPS = 2, 4


@dataclass(frozen=True)
class ArithChain:
    start: int
    ops: tuple[tuple[str, int], ...]  # (operator symbol, operand), applied in order

    def values(self) -> list[int]:
        """The running value after each operation (what the expert's code prints, step by step)."""
        values, value = [], self.start
        for symbol, operand in self.ops:
            value = OPS[symbol](value, operand)
            values.append(value)
        return values

    @property
    def result(self) -> int:
        return self.values()[-1]

    def meta(self) -> dict:
        """JSON-friendly spec stored on the task (the expert rebuilds the chain from it)."""
        return {"start": self.start, "ops": [[symbol, operand] for symbol, operand in self.ops]}

    @classmethod
    def from_meta(cls, meta: dict) -> "ArithChain":
        return cls(int(meta["start"]), tuple((str(s), int(n)) for s, n in meta["ops"]))


def sample_chain(rng: random.Random) -> ArithChain:
    ops = []
    for _ in range(rng.randint(MIN_OPS, MAX_OPS)):
        symbol = rng.choice(tuple(OPS))
        # Multipliers stay 2-digit so four-step chains end in numbers a model can still copy reliably.
        operand = rng.randint(10, 99) if symbol == "*" else rng.randint(10, 999)
        ops.append((symbol, operand))
    return ArithChain(rng.randint(10, 999), tuple(ops))


def phrase_op(symbol: str, operand: int) -> str:
    return _OP_PHRASES[symbol].format(n=operand)


def question_for(chain: ArithChain, rng: random.Random) -> str:
    phrases = [phrase_op(s, n) for s, n in chain.ops]
    steps = ", ".join(phrases[:-1]) + ", then " + phrases[-1]
    template = rng.choice(_TEMPLATES)
    return template.format(start=chain.start, steps=steps, Steps=steps[0].upper() + steps[1:])
