"""The agent's `search("...")` tool: one small backend interface, a local BM25 index and an HTTP client.

The agent only ever sees `format_hits(...)` text, so switching from the built-in BM25 corpus to a remote
search service changes no prompt and no trajectory format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import bm25s
import httpx
import numpy as np
from bm25s.stopwords import STOPWORDS_EN
from pydantic import BaseModel, Field, ValidationError

# Long documents would flood the agent's context; the built-in KB's docs are far shorter than this.
MAX_HIT_CHARS = 600
_TOKEN = re.compile(r"\w+")
_STOPWORDS = frozenset(STOPWORDS_EN)


class SearchHit(BaseModel):
    id: str = Field(description="Document id.")
    title: str = Field(description="Document title.")
    text: str = Field(description="Document text.")
    score: float = Field(description="Backend relevance score (higher is better).")


class SearchError(RuntimeError):
    """A backend could not answer; the message is what the agent sees in its observation."""


@runtime_checkable
class SearchBackend(Protocol):
    def search(self, query: str, k: int = 3) -> list[SearchHit]: ...


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without English stopwords (no stemming: PyStemmer is not a dependency)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def _check_doc(raw: object, where: str, seen: dict[str, str]) -> dict:
    """Validate one corpus doc; `where` names it in errors ("line 3", "doc 2")."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object with 'id', 'title' and 'text'")
    for field in ("id", "title", "text"):
        if not isinstance(raw.get(field), str):
            raise ValueError(f"{where}: field {field!r} must be a string")
    if raw["id"] in seen:
        raise ValueError(f"{where}: duplicate id {raw['id']!r} (first at {seen[raw['id']]})")
    seen[raw["id"]] = where
    return {"id": raw["id"], "title": raw["title"], "text": raw["text"]}


class BM25Search:
    """BM25 (bm25s, Lucene variant) over title + text.

    Thread-safe: after construction the index is only read, and ranking uses no shared scratch state.
    """

    def __init__(self, docs: list[dict]) -> None:
        self._docs = docs
        self._retriever: bm25s.BM25 | None = None
        if docs:
            self._retriever = bm25s.BM25()
            corpus_tokens = [tokenize(f"{d['title']} {d['text']}") for d in docs]
            self._retriever.index(corpus_tokens, show_progress=False)

    @classmethod
    def from_docs(cls, docs: Iterable[dict]) -> "BM25Search":
        seen: dict[str, str] = {}
        return cls([_check_doc(doc, f"doc {i}", seen) for i, doc in enumerate(docs, start=1)])

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "BM25Search":
        """One doc per line: {"id", "title", "text"}; blank lines are skipped; errors name the 1-based line."""
        seen: dict[str, str] = {}
        docs = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"line {number}: invalid JSON ({e.msg})") from e
                docs.append(_check_doc(raw, f"line {number}", seen))
        return cls(docs)

    def __len__(self) -> int:
        return len(self._docs)

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        """Top-k docs by BM25 score, best first (ties by corpus order); docs sharing no term are never returned."""
        if self._retriever is None or k <= 0:
            return []
        token_ids = self._retriever.get_tokens_ids(tokenize(query))
        if not token_ids:
            return []
        scores = self._retriever.get_scores_from_ids(token_ids)
        return [self._hit(i, scores[i]) for i in _top_k(scores, k) if scores[i] > 0]

    def _hit(self, index: int, score: float) -> SearchHit:
        doc = self._docs[index]
        return SearchHit(id=doc["id"], title=doc["title"], text=doc["text"], score=round(float(score), 4))


def _top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, best first; equal scores keep corpus order so results are deterministic."""
    if k < len(scores):
        candidates = np.argpartition(-scores, k - 1)[:k]
    else:
        candidates = np.arange(len(scores))
    return sorted(candidates.tolist(), key=lambda i: (-scores[i], i))


class HTTPSearch:
    """A remote search service: POST {url} {"query", "k"} -> {"hits": [SearchHit, ...]}."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        # One pooled client for all calls; httpx.Client is safe to share between threads.
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        try:
            response = self._client.post(self.url, json={"query": query, "k": k})
            response.raise_for_status()
            hits = response.json()["hits"]
            return [SearchHit.model_validate(hit) for hit in hits][:k]
        except httpx.HTTPStatusError as e:
            raise SearchError(f"search service returned HTTP {e.response.status_code}") from e
        except httpx.HTTPError as e:
            raise SearchError(f"search service unreachable: {type(e).__name__}") from e
        except (ValueError, KeyError, TypeError, ValidationError) as e:
            raise SearchError("search service sent a malformed reply (expected {'hits': [...]})") from e

    def close(self) -> None:
        self._client.close()


def format_hits(hits: list[SearchHit], max_chars: int = MAX_HIT_CHARS) -> str:
    """What the agent reads: one numbered line per doc, "[1] <title>: <text>"."""
    if not hits:
        return "No results."
    lines = []
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.text.split())  # one doc per line, whatever the corpus' line breaks
        if len(text) > max_chars:
            text = text[: max_chars - 3].rstrip() + "..."
        lines.append(f"[{rank}] {hit.title}: {text}")
    return "\n".join(lines)


def make_search_tool(backend: SearchBackend, k: int = 3) -> Callable[[str], str]:
    """The `search(query)` function put into the agent's interpreter."""

    def search(query: str) -> str:
        if not isinstance(query, str):
            raise TypeError(
                f"search() takes the query as a string, e.g. search(\"some words\"); got {type(query).__name__}"
            )
        if not query.strip():
            raise ValueError("search() needs a non-empty query string")
        return format_hits(backend.search(query, k=k))

    return search


def agent_tools(backend: SearchBackend, k: int = 3) -> dict[str, Callable[[str], str]]:
    """The tools an episode's sandbox exposes: `search` and its alias `web_search` (the paper's name)."""
    search = make_search_tool(backend, k=k)
    return {"search": search, "web_search": search}


def tools_for_corpus(search_corpus: str | Path | None, k: int = 3) -> dict[str, Callable[[str], str]]:
    """The agent's tools over a JSONL search corpus, or over the built-in suite's knowledge base when none is given
    (what both model services configure with `search_corpus`)."""
    if search_corpus:
        backend: SearchBackend = BM25Search.from_jsonl(search_corpus)
    else:
        from shared.tasks.builtin import builtin_search_backend  # the suite is only needed without a corpus

        backend = builtin_search_backend()
    return agent_tools(backend, k=k)
