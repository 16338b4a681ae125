"""The judge's output parser on a corpus of realistic replies, good and broken; and the gold-answer leak check."""

import pytest

from shared.schemas.agent import Step, Task
from services.teacher.judge import leaked_answer
from services.teacher.parsing import ParseFailure, Verdict, parse_equivalence, parse_judgement

N_STEPS = 5  # the trajectory the prompt showed: steps 1..5

# (model output, expected 0-based first_error_step, expected answer_correct, expected analysis)
GOOD = [
    ('{"answer_correct": false, "first_error_step": 3, "analysis": "wrong operand", "suggestion": "use 12"}',
     2, False, "wrong operand"),
    ('```json\n{"answer_correct": false, "first_error_step": 2, "analysis": "a", "suggestion": "b"}\n```', 1, False, "a"),
    ('```\n{"first_error_step": 4, "analysis": "x"}\n```', 3, None, "x"),
    ('Here is my review.\n{"answer_correct": false, "first_error_step": 5, "analysis": "final answer is off"}\n'
     'Let me know if you need more.', 4, False, "final answer is off"),
    ('{"answer_correct": false, "first_error_step": 3, "analysis": "trailing", "suggestion": "comma",}', 2, False, "trailing"),
    ('{"answer_correct": "false", "first_error_step": "3", "analysis": "strings"}', 2, False, "strings"),
    ('{"answer_correct": false, "first_error_step": "Step 2", "analysis": "named step"}', 1, False, "named step"),
    ("{'answer_correct': False, 'first_error_step': 2, 'analysis': 'python dict'}", 1, False, "python dict"),
    ('{"answer_correct": false, "first_error_step": 3.0, "analysis": "float"}', 2, False, "float"),
    ('{"correct": false, "error_step": 2, "explanation": "other keys", "fix": "f"}', 1, False, "other keys"),
    ('{"answer_correct": false, "first_error_step": 4, "analysis": "the multiplication uses 13 inst', 3, False,
     "the multiplication uses 13 inst"),                                  # truncated inside a string
    ('{"answer_correct": false, "first_error_step": 4, "analysis": "ok", "sugg', 3, False, "ok"),  # truncated key
    ('{"answer_correct": false, "first_error_step": 2, ', 1, False, ""),  # truncated after a comma
    ('{"answer_correct": false, "first_error_step": 2, "analysis": {"nested": "text"}}', 1, False, "{'nested': 'text'}"),
    ('{"answer_correct": true, "first_error_step": -1, "analysis": "all fine"}', None, True, "all fine"),
    ('{"answer_correct": true, "first_error_step": null, "analysis": "none"}', None, True, "none"),
    ('{"answer_correct": true, "first_error_step": 0, "analysis": "zero means none"}', None, True, "zero means none"),
    ('{"answer_correct": true, "first_error_step": "none", "analysis": ""}', None, True, ""),
    ('{"answer_correct": false, "first_error_step": 1, "analysis": "the plan"}', 0, False, "the plan"),
    ('first_error_step: 3, answer_correct: false', 2, False, ""),   # no braces at all: key-value pairs still read
    ('<think>Step 2 sets {a} wrongly... or is it step 3?</think>\n{"first_error_step": 2, "analysis": "t"}',
     1, None, "t"),                                                    # a reasoning model's thinking comes first
    ('The format is {"key": value}. My verdict: {"first_error_step": 4, "analysis": "braces in prose"}',
     3, None, "braces in prose"),
    ('{"verdict": {"first_error_step": 2, "analysis": "nested"}}', 1, None, "nested"),
]

BROKEN = [
    ("", "wrote nothing"),
    ("   \n ", "wrote nothing"),
    ("I think step three is wrong because the agent multiplied by 13.", "no JSON object"),
    ('{"answer_correct": false, "analysis": "no step given"}', "no first_error_step"),
    ('{"answer_correct": false, "first_error_step": 9, "analysis": "past the end"}', "outside the trajectory"),
    ('{"answer_correct": false, "first_error_step": "the third", "analysis": "words"}', "not a step number"),
    ("<|im_end|><|im_start|>", "no JSON object"),
    ("[1, 2, 3]", "no JSON object"),
    ("<think>Step 3 looks wrong, I should answer with {\"first_error_step\": 3", "wrote nothing"),  # never answered
]


@pytest.mark.parametrize("text, step, correct, analysis", GOOD)
def test_good_and_repairable_outputs_are_read(text, step, correct, analysis):
    verdict = parse_judgement(text, N_STEPS)
    assert isinstance(verdict, Verdict), verdict
    assert verdict.first_error_step == step
    assert verdict.answer_correct is correct
    assert verdict.analysis == analysis


@pytest.mark.parametrize("text, reason", BROKEN)
def test_unusable_outputs_say_why(text, reason):
    failure = parse_judgement(text, N_STEPS)
    assert isinstance(failure, ParseFailure)
    assert reason in failure.reason


def test_the_first_json_object_wins_over_a_later_one():
    text = '```json\n{"first_error_step": 2}\n```\nOr maybe {"first_error_step": 4}'
    assert parse_judgement(text, N_STEPS).first_error_step == 1


@pytest.mark.parametrize("text, verdict", [
    ('{"equivalent": true, "reason": "same city"}', True),
    ('```json\n{"equivalent": "false", "reason": "different"}\n```', False),
    ("Yes, they are the same.", True),
    ("No.", False),
    ("", None),
    ("they might be", None),
])
def test_equivalence_replies(text, verdict):
    assert parse_equivalence(text)[0] is verdict


_KB = Task(id="k", question="In which country was Kake Pelnurpon born?", true_answer="Posvalland")
_ARITH = Task(id="a", question="Start with 347. Add 85, then multiply by 12.", true_answer=5184)


def test_a_step_that_states_the_gold_answer_unseen_leaks_it():
    guess = Step(kind="act", thought="It must be Posvalland.", code='final_answer_print("Posvalland")')
    assert leaked_answer(guess, _KB, []) == "Posvalland"
    computed = Step(kind="act", thought="Multiply.", code="print(432 * 12)  # 5184")
    assert leaked_answer(computed, _ARITH, []) == "5184"


def test_an_answer_the_prefix_showed_is_fair_to_use():
    searched = Step(kind="act", thought="", code='print(search("Dulos"))',
                    observation="[1] Dulos: Dulos is a city located in Posvalland.")
    final = Step(kind="act", thought="Dulos is in Posvalland.", code='final_answer_print("Posvalland")')
    assert leaked_answer(final, _KB, [searched]) is None
    printed = Step(kind="act", thought="", code="b = 432 * 12\nprint(b)", observation="5184")
    assert leaked_answer(Step(kind="act", thought="", code="final_answer_print(5184)"), _ARITH, [printed]) is None


def test_numbers_inside_other_numbers_are_not_leaks():
    step = Step(kind="act", thought="", code="print(51840 / 10, 15184)")
    assert leaked_answer(step, _ARITH, []) is None
