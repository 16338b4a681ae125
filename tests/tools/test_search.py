"""The search tool: BM25 ranking and edge cases, corpus loading errors, HTTP backend, what the agent sees."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shared.tools.search import (
    BM25Search,
    HTTPSearch,
    SearchBackend,
    SearchError,
    SearchHit,
    format_hits,
    make_search_tool,
)

DOCS = [
    {"id": "1", "title": "Velmar", "text": "Velmar is a city located in Quorland."},
    {"id": "2", "title": "Quorland", "text": "Quorland is a country. The capital of Quorland is Velmar."},
    {"id": "3", "title": "Mira Kolt", "text": "Mira Kolt is a sculptor. Mira Kolt was born in Velmar."},
    {"id": "4", "title": "Zorvex Labs", "text": "Zorvex Labs was founded by Mira Kolt."},
    {"id": "5", "title": "Dask Works", "text": "Dask Works makes robots."},
]


@pytest.fixture(scope="module")
def backend() -> BM25Search:
    return BM25Search.from_docs(DOCS)


def test_the_doc_about_the_query_ranks_first(backend):
    assert backend.search("Zorvex Labs")[0].title == "Zorvex Labs"
    assert backend.search("Mira Kolt")[0].title == "Mira Kolt"
    assert backend.search("quorland")[0].title == "Quorland"  # case does not matter


def test_hits_are_scored_best_first_and_k_is_respected(backend):
    hits = backend.search("Velmar Quorland Mira", k=2)
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score > 0
    assert [h.id for h in backend.search("Velmar", k=10)] == ["1", "2", "3"]  # only docs that share a term, even when k is larger
    assert backend.search("Velmar", k=0) == []


@pytest.mark.parametrize("query", ["", "   ", "the of and", "nonexistentword"])
def test_queries_without_known_terms_return_nothing(backend, query):
    assert backend.search(query) == []


def test_an_empty_corpus_returns_nothing():
    assert BM25Search.from_docs([]).search("anything") == []


def test_equal_scores_keep_corpus_order():
    docs = [{"id": str(i), "title": f"doc {i}", "text": "same words here"} for i in range(6)]
    hits = BM25Search.from_docs(docs).search("words", k=4)
    assert [h.id for h in hits] == ["0", "1", "2", "3"]


def test_concurrent_searches_agree_with_serial_ones(backend):
    queries = ["Velmar", "Mira Kolt", "Zorvex", "Quorland capital", "robots"] * 40
    serial = [backend.search(q) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(backend.search, queries)) == serial


def test_from_jsonl_loads_docs_and_skips_blank_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n\n", encoding="utf-8")
    loaded = BM25Search.from_jsonl(path)
    assert len(loaded) == len(DOCS)
    assert loaded.search("Zorvex")[0].id == "4"


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2: invalid JSON"),
        ('["a list"]', "line 2: expected a JSON object"),
        ('{"id": "9", "title": "T"}', "line 2: field 'text' must be a string"),
        ('{"id": 9, "title": "T", "text": "x"}', "line 2: field 'id' must be a string"),
        ('{"id": "1", "title": "T", "text": "x"}', "line 2: duplicate id '1' (first at line 1)"),
    ],
)
def test_from_jsonl_errors_name_the_line(tmp_path, bad_line, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(DOCS[0]) + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        BM25Search.from_jsonl(path)
    assert str(info.value).startswith(message)


def test_from_docs_errors_name_the_doc():
    with pytest.raises(ValueError, match="doc 2: field 'title' must be a string"):
        BM25Search.from_docs([DOCS[0], {"id": "x", "text": "y"}])


def test_format_hits_is_what_the_agent_reads():
    hits = [SearchHit(id="1", title="Velmar", text="Velmar is a city.\nIt is old.", score=2.0),
            SearchHit(id="2", title="Quorland", text="A country.", score=1.0)]
    assert format_hits(hits) == "[1] Velmar: Velmar is a city. It is old.\n[2] Quorland: A country."
    assert format_hits([]) == "No results."


def test_format_hits_shortens_long_documents():
    hit = SearchHit(id="1", title="Long", text="word " * 500, score=1.0)
    line = format_hits([hit], max_chars=50)
    assert line.endswith("...") and len(line) == len("[1] Long: ") + 50


def test_search_tool_validates_the_query(backend):
    search = make_search_tool(backend, k=2)
    assert search("Velmar") == format_hits(backend.search("Velmar", k=2))
    assert search("nonexistentword") == "No results."
    with pytest.raises(TypeError, match="query as a string.*got int"):
        search(42)
    with pytest.raises(ValueError, match="non-empty query"):
        search("  ")


def _http_backend(handler, **kwargs) -> HTTPSearch:
    return HTTPSearch("http://search.test/v1/search", transport=httpx.MockTransport(handler), **kwargs)


def test_http_search_posts_the_query_and_reads_hits():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        seen["auth"] = request.headers.get("authorization")
        return httpx.Response(200, json={"hits": [{"id": "1", "title": "T", "text": "x", "score": 1.5}]})

    http = _http_backend(handler, token="s3cret")
    assert isinstance(http, SearchBackend)
    assert http.search("Velmar", k=2) == [SearchHit(id="1", title="T", text="x", score=1.5)]
    assert seen == {"body": {"query": "Velmar", "k": 2}, "auth": "Bearer s3cret"}


def test_http_search_sends_no_token_unless_given():
    def handler(request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        return httpx.Response(200, json={"hits": []})

    assert _http_backend(handler).search("q") == []


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda r: httpx.Response(500, text="boom"), "HTTP 500"),
        (lambda r: httpx.Response(200, json={"results": []}), "malformed reply"),
        (lambda r: httpx.Response(200, json={"hits": [{"id": "1"}]}), "malformed reply"),
        (lambda r: httpx.Response(200, text="not json"), "malformed reply"),
    ],
)
def test_http_search_failures_become_search_errors(handler, message):
    with pytest.raises(SearchError, match=message):
        _http_backend(handler).search("q")


def test_http_search_timeouts_become_search_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(SearchError, match="unreachable: ReadTimeout"):
        _http_backend(handler, timeout=0.1).search("q")
