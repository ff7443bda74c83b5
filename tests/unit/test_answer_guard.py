"""The embedded engine's answer stage: stops, tool calls, and the repeated-call guard."""

from __future__ import annotations

import itertools

from stepflash.core.events import Finish, FinishReason, TextDelta, ToolCallStart
from stepflash.core.request import Message, Role, Sampling, TextPart, ToolCall
from stepflash.engines.embedded.engine import answered_calls
from stepflash.engines.embedded.generation import GenerationPlan, _Answer, call_key

CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def plan(
    answered: frozenset = frozenset(),
    parallel: bool = True,
    stop: tuple[str, ...] = (),
    guard: bool = True,
) -> GenerationPlan:
    counter = itertools.count()
    return GenerationPlan(
        choice=0,
        prompt_tokens=[1],
        reasoning_budget=0,
        max_tokens=100,
        sampling=Sampling(stop=stop),
        grammar=None,
        tool_names=frozenset({"get_weather"}),
        parallel_tool_calls=parallel,
        guard_repeats=guard,
        answered_calls=answered,
        no_tools_prompt_tokens=[1],
        close_tokens=[],
        new_call_id=lambda: f"call_{next(counter)}",
    )


def run(answer: _Answer, chunks: list[str], truncated: bool = False) -> list:
    events = [event for chunk in chunks for event in answer.feed(chunk)]
    return events + list(answer.finish(truncated))


def test_a_new_call_finishes_with_tool_calls() -> None:
    events = run(_Answer(plan()), [CALL_TEXT[:10], CALL_TEXT[10:]])
    assert [e.name for e in events if isinstance(e, ToolCallStart)] == ["get_weather"]
    assert events[-1] == Finish(FinishReason.TOOL_CALLS, 0, None)


def test_a_call_repeated_after_its_result_is_dropped_and_retried_without_tools() -> None:
    answered = frozenset({call_key("get_weather", '{"city":  "Paris"}')})
    answer = _Answer(plan(answered))
    events = [event for event in answer.feed(CALL_TEXT)]
    assert not any(isinstance(e, ToolCallStart) for e in events)
    assert answer.wants_retry_without_tools


def test_a_forced_call_is_never_dropped() -> None:
    answered = frozenset({call_key("get_weather", '{"city": "Paris"}')})
    events = run(_Answer(plan(answered, guard=False)), [CALL_TEXT])
    assert any(isinstance(e, ToolCallStart) for e in events)


def test_a_different_call_is_not_a_repeat() -> None:
    answered = frozenset({call_key("get_weather", '{"city": "Rome"}')})
    events = run(_Answer(plan(answered)), [CALL_TEXT])
    assert any(isinstance(e, ToolCallStart) for e in events)


def test_parallel_calls_off_keeps_the_first_call_only() -> None:
    two = CALL_TEXT + CALL_TEXT.replace("Paris", "Rome")
    events = run(_Answer(plan(parallel=False)), [two])
    assert len([e for e in events if isinstance(e, ToolCallStart)]) == 1


def test_stop_sequence_ends_the_answer_and_is_reported() -> None:
    events = run(_Answer(plan(stop=("END",))), ["Hello E", "ND and more"])
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello "
    assert events[-1] == Finish(FinishReason.STOP, 0, "END")


def test_truncated_text_finishes_with_length() -> None:
    events = run(_Answer(plan()), ["partial answer"], truncated=True)
    assert events[-1].reason is FinishReason.LENGTH


def test_answered_calls_only_counts_calls_after_the_last_user_turn() -> None:
    old = ToolCall("a", "get_weather", '{"city": "Oslo"}')
    new = ToolCall("b", "get_weather", '{"city": "Paris"}')
    unanswered = ToolCall("c", "get_weather", '{"city": "Rome"}')
    messages = (
        Message(Role.USER, (TextPart("q1"),)),
        Message(Role.ASSISTANT, tool_calls=(old,)),
        Message(Role.TOOL, (TextPart("r"),), tool_call_id="a"),
        Message(Role.USER, (TextPart("q2"),)),
        Message(Role.ASSISTANT, tool_calls=(new, unanswered)),
        Message(Role.TOOL, (TextPart("r"),), tool_call_id="b"),
    )
    assert answered_calls(messages) == {call_key("get_weather", '{"city": "Paris"}')}
