"""SFT data: the assistant-only loss mask, token by token; packing without cross-contamination; the schedule."""

import random

import pytest
import torch

from shared.agent.format import episode_messages
from shared.models.loading import load_causal_lm
from shared.schemas.training import Conversation
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps
from services.trainer.sft.data import (
    IGNORE_INDEX,
    build_schedule,
    bucket,
    collate_packed,
    collate_padded,
    mask_from_char_spans,
    mask_from_generation_markers,
    pack,
    tokenize_conversation,
)
from services.trainer.sft.loss import PackedCausalLMLoss, reference_loss_sum


@pytest.fixture(scope="module")
def model_and_tokenizer(student_model_dir):
    return load_causal_lm(student_model_dir)


def _conversations(n=3):
    conversations = []
    for task in builtin_tasks(family="arith", split="train", n=n, seed=5):
        steps = expert_steps(task)
        for index, step in enumerate(steps):  # observations as the sandbox would print them
            if step.kind == "act":
                step.observation = f"{index * 111}"
        conversations.append(Conversation(messages=episode_messages(task, steps)))
    return conversations


def _messages(conversation):
    return [{"role": m.role, "content": m.content} for m in conversation.messages]


def test_loss_mask_covers_exactly_the_assistant_turns(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    conversation = _conversations(1)[0]
    messages = _messages(conversation)
    example = tokenize_conversation(tokenizer, conversation, max_seq_length=4096)
    # Independent expectation: the assistant text is each assistant content plus its end-of-turn token,
    # and every run of masked tokens decodes to exactly one of them, in order.
    expected = [m["content"] + tokenizer.eos_token for m in messages if m["role"] == "assistant"]
    runs, current = [], []
    for token, mask in zip(example.input_ids, example.loss_mask):
        if mask:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tokenizer.decode(run) for run in runs] == expected
    # No other token: what is left unmasked is the rendered chat with exactly those texts cut out
    # (system, task and observation turns, role headers, the newline after each end of turn).
    unmasked = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if not m])
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    for text in expected:
        assert text in rendered
        rendered = rendered.replace(text, "", 1)
    assert unmasked == rendered


def test_generation_markers_and_char_spans_agree_token_by_token(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    for conversation in _conversations(3):
        messages = _messages(conversation)
        from_template = mask_from_generation_markers(tokenizer, messages)
        from_spans = mask_from_char_spans(tokenizer, messages)
        assert from_template.input_ids == from_spans.input_ids
        assert from_template.loss_mask == from_spans.loss_mask
        assert sum(from_template.loss_mask) > 0


def test_an_assistant_turn_of_weight_zero_is_context_only(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    conversation = _conversations(1)[0]
    assistant = [i for i, m in enumerate(conversation.messages) if m.role == "assistant"]
    assert len(assistant) >= 2
    full = tokenize_conversation(tokenizer, conversation, max_seq_length=4096)
    muted = conversation.model_copy(deep=True)
    muted.messages[assistant[0]].weight = 0
    example = tokenize_conversation(tokenizer, muted, max_seq_length=4096)
    assert example.input_ids == full.input_ids  # the turn stays in the context
    trained = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m])
    assert conversation.messages[assistant[0]].content not in trained
    assert all(conversation.messages[i].content in trained for i in assistant[1:])
    assert sum(example.loss_mask) < sum(full.loss_mask)
    every_turn_muted = muted.model_dump()
    for i in assistant:
        every_turn_muted["messages"][i]["weight"] = 0
    with pytest.raises(ValueError, match="weight 1"):
        type(conversation).model_validate(every_turn_muted)


def test_truncation_cuts_ids_and_mask_together(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    example = tokenize_conversation(tokenizer, _conversations(1)[0], max_seq_length=100)
    assert len(example.input_ids) == len(example.loss_mask) == 100


def test_packed_rows_do_not_attend_across_conversations(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = [tokenize_conversation(tokenizer, c, 4096) for c in _conversations(3)]
    loss = PackedCausalLMLoss(model)
    with torch.no_grad():
        packed = collate_packed(examples, [0, 1, 2])
        together = loss(packed.input_ids, packed.labels, position_ids=packed.position_ids)
        alone = sum(
            loss(b.input_ids, b.labels, position_ids=b.position_ids)
            for b in (collate_packed(examples, [i]) for i in range(3))
        )
        padded = collate_padded(examples, [0, 1, 2], tokenizer.pad_token_id)
        bucketed = loss(padded.input_ids, padded.labels, attention_mask=padded.attention_mask)
        reference = reference_loss_sum(model, packed.input_ids, packed.labels, position_ids=packed.position_ids)
    assert packed.loss_tokens == padded.loss_tokens == sum(sum(e.loss_mask[1:]) for e in examples)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(bucketed, alone, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(reference, alone, rtol=1e-4, atol=1e-3)
    # The first token of each conversation is never a target.
    starts = (packed.position_ids[0] == 0).nonzero().flatten()
    assert (packed.labels[0, starts] == IGNORE_INDEX).all()


def test_padding_is_masked_and_counted(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    examples = [tokenize_conversation(tokenizer, c, 4096) for c in _conversations(2)]
    batch = collate_padded(examples, [0, 1], tokenizer.pad_token_id)
    assert batch.tokens == len(examples[0]) + len(examples[1])
    assert batch.slots == 2 * max(len(e) for e in examples)
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all() if batch.attention_mask is not None else True


def test_pack_and_bucket_respect_capacity_and_cover_every_example():
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(200)]
    for group in (pack, bucket):
        bins = group(lengths, 1024, random.Random(1))
        assert sorted(i for b in bins for i in b) == list(range(200))
        for b in bins:
            used = sum(lengths[i] for i in b) if group is pack else len(b) * max(lengths[i] for i in b)
            assert used <= 1024


def test_schedule_is_the_same_for_one_process_and_many():
    lengths = [random.Random(i).randint(50, 400) for i in range(64)]
    common = dict(micro_batch_tokens=800, num_epochs=2, max_steps=None, seed=3)
    one = build_schedule(lengths, micro_batches_per_step=4, **common)  # 1 process, accumulation 4
    two = build_schedule(lengths, micro_batches_per_step=2 * 2, **common)  # 2 processes, accumulation 2
    assert one == two
    assert build_schedule(lengths, micro_batches_per_step=4, **{**common, "max_steps": 5}) == one[:5]
    half = build_schedule(lengths, micro_batches_per_step=4, **{**common, "num_epochs": 1.5})
    epoch = build_schedule(lengths, micro_batches_per_step=4, **{**common, "num_epochs": 1})
    assert len(epoch) < len(half) < len(one)


def test_training_tokens_equal_what_a_rollout_feeds_the_model(model_and_tokenizer):
    """The trainer's tokenisation of an episode is, token for token and mask for mask, the sequence a
    rollout builds turn by turn (`shared/agent/tokens.py`): prompt, each generated turn ending in the
    end-of-turn token, then the observation turn up to the next generation prompt."""
    from shared.agent.format import render_step, tool_turn
    from shared.agent.tokens import chat_token_ids, tool_turn_ids
    from shared.tasks.gold import gold_episodes

    _, tokenizer = model_and_tokenizer
    tasks = builtin_tasks(family="arith", split="eval", n=2, seed=3) + builtin_tasks(family="kb", split="eval", n=2, seed=3)
    for task, episode in zip(tasks, gold_episodes(tasks)):
        ids = chat_token_ids(tokenizer, episode_messages(task, []), add_generation_prompt=True)
        mask = [0] * len(ids)
        for index, step in enumerate(episode.steps):
            generated = tokenizer(render_step(step), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids, mask = ids + generated, mask + [1] * len(generated)
            if index < len(episode.steps) - 1:
                follow = tool_turn_ids(tokenizer, tool_turn(step) or "", model_emitted_eos=True)
                ids, mask = ids + follow, mask + [0] * len(follow)
        trained = tokenize_conversation(tokenizer, Conversation(messages=episode_messages(task, episode.steps)), 4096)
        assert trained.input_ids[: len(ids)] == ids, task.id
        assert trained.loss_mask[: len(ids)] == mask, task.id
        assert sum(trained.loss_mask) == sum(mask)  # nothing after the last assistant turn is trained on
