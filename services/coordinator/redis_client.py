"""The coordinator's Redis client: redis-py's asyncio client, with its commands packed by hiredis.

redis-py packs an asyncio connection's commands in Python (only its sync connections use hiredis's packer); for
the ~30 arguments of a settle call that was a fifth of a worker's CPU per item, and hiredis packs them about
ten times faster. hiredis is already a dependency (redis-py parses replies with it). Packing is byte for byte
what redis-py sends, and the same values are refused (DataError).
"""

from __future__ import annotations

import functools
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import DataError
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """`Redis.from_url(url, **kwargs)`, packing with hiredis where that is available and sends the same bytes."""
    client = aioredis.Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    # hiredis encodes text as strict UTF-8, redis-py's default; a client configured otherwise keeps its packer.
    if HIREDIS_AVAILABLE and kwargs.get("encoding", "utf-8") == "utf-8" \
            and kwargs.get("encoding_errors", "strict") == "strict":
        pool.connection_class = _packed_by_hiredis(pool.connection_class)
    return client


@functools.cache
def _packed_by_hiredis(base: type) -> type:
    """`base` (the connection class the URL chose: TCP, TLS, Unix socket) with hiredis's command packer."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py: a command given with its subcommand ("CONFIG GET") goes out as two arguments.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        for arg in args:
            # hiredis would send True as 1; redis-py refuses bools, and so do we.
            if arg.__class__ is bool:
                raise DataError("Invalid input of type: 'bool'. Convert to a bytes, string, int or float first.")
            if isinstance(arg, (bytearray, memoryview)):
                args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
                break
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc

    return type(f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command, "__module__": __name__})
