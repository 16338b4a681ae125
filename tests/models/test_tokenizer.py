import json
import random
import unicodedata

import pytest
from transformers import AutoTokenizer

from shared.agent.prompts import SYSTEM_PROMPT, TAGS
from shared.models.tiny import tiny_config
from shared.models.tokenizer import CHATML_TEMPLATE, SPECIAL_TOKENS, train_tokenizer

# A small local corpus: these tests are about the tokenizer machinery, not the built-in task suite.
CORPUS = [
    SYSTEM_PROMPT,
    "<first_thought>Compute the product, then add.</first_thought>",
    "<thought>Multiply 123 by 45.</thought><code>print(123 * 45)</code>",
    "Observation: 5535",
    "<code>final_answer_print(5535 + 17)</code>",
    "What is the capital of the country where the river Lumo rises?",
    'search("river Lumo") returned 3 documents about Vardania.',
] * 20

ROUND_TRIP_TEXTS = [
    "",
    "plain ascii text",
    "numbers 0 7 42 3.14159 -1e-9 1,000,000 0x1F",
    "def f(x):\n\treturn {'a': [x ** 2, x // 3]}  # comment\r\n",
    "   leading and trailing spaces   \n\n\n",
    "unicode: café naïve Ωμέγα Привет 日本語 한국어 عربى עברית",
    "emoji 🎉👩‍👩‍👧 and symbols ∑∫√ ™ © \u00a0nbsp",
    "control \x00\x01\x7f chars and a lone tab\t",
    "never seen: zyxwvq QQQQ ~~~ ```",
    "<thought>inline</thought>x<code>y</code>",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=512)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_any_text_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids or text == ""
    assert tokenizer.decode(ids) == text


def test_text_is_nfc_normalised_like_qwen2(tokenizer):
    # The one exception to round-tripping: Qwen2's pipeline NFC-normalises before bytes.
    decomposed = "cafe\u0301"
    decoded = tokenizer.decode(tokenizer(decomposed, add_special_tokens=False)["input_ids"])
    assert decoded == unicodedata.normalize("NFC", decomposed) == "café"


@pytest.mark.parametrize("tag", TAGS)
def test_each_tag_is_one_token_and_decodes_as_text(tokenizer, tag):
    ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    in_context = tokenizer(f"a{tag}b", add_special_tokens=False)["input_ids"]
    assert ids[0] in in_context
    # Tags are content, not control tokens: skip_special_tokens keeps them.
    assert tokenizer.decode(ids, skip_special_tokens=True) == tag


def test_special_tokens_and_ids(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.padding_side == "left"
    for token in SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    # Encoding adds nothing around the text (no BOS/EOS post-processor).
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(tokenizer("a<|im_end|>")["input_ids"], skip_special_tokens=True) == "a"


def test_vocab_size_is_an_upper_bound_including_tags():
    rng = random.Random(0)
    corpus = [" ".join("".join(rng.choices("abcdefgh", k=rng.randint(2, 8))) for _ in range(50)) for _ in range(200)]
    assert len(train_tokenizer(corpus, vocab_size=400)) == 400
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(corpus, vocab_size=100)


def test_training_is_deterministic():
    assert train_tokenizer(CORPUS, 512).get_vocab() == train_tokenizer(CORPUS, 512).get_vocab()


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<thought>add</thought><code>print(4)</code>"},
]


def test_chat_template_renders_plain_chatml(tokenizer):
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<thought>add</thought><code>print(4)</code><|im_end|>\n"
    )


def test_generation_prompt_and_no_injected_system(tokenizer):
    rendered = tokenizer.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(CONVERSATION[1:2], tokenize=True, add_generation_prompt=True)["input_ids"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_assistant_mask_covers_content_and_eos(tokenizer):
    encoded = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == CONVERSATION[2]["content"] + "<|im_end|>"


def test_save_load_preserves_template_and_padding(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.chat_template == CHATML_TEMPLATE
    assert loaded.padding_side == "left"
    assert loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded.apply_chat_template(CONVERSATION, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )


def test_qwen2_checkpoint_loader_rebuilds_the_same_tokenizer(tokenizer, tmp_path):
    # With a qwen2 config.json beside it, AutoTokenizer (and vLLM) rebuild Qwen2Tokenizer from
    # vocab + merges; the ids must not change.
    tokenizer.save_pretrained(tmp_path)
    tiny_config("nano", tokenizer).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    for text in ROUND_TRIP_TEXTS + CORPUS[:7]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], text
    ours, theirs = (json.loads(t.backend_tokenizer.to_str()) for t in (tokenizer, loaded))
    for part in ("normalizer", "pre_tokenizer", "decoder", "added_tokens"):
        assert ours[part] == theirs[part], part
    assert len(loaded) == len(tokenizer)
