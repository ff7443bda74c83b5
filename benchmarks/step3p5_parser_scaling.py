"""Is the step3p5 output parser linear? 100K vs 1M characters, streamed a token at a time.

Builds a realistic Step 3.7 output (reasoning, then prose and tool calls whose values carry
code with XML-looking text), feeds it in 4-character pieces (about one token each) through
`Step3p5OutputParser`, and reports the time ratio (target: 1M ≤ 12× 100K) and characters/s.

    .venv/bin/python benchmarks/step3p5_parser_scaling.py
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from stepflash.core.request import Tool
from stepflash.dialects.step3p5 import Step3p5OutputParser

RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = (
    Tool("write_file", "", {"type": "object", "properties": {
        "path": {"type": "string"}, "content": {"type": "string"}}}),
    Tool("run", "", {"type": "object", "properties": {
        "command": {"type": "string"}, "timeout": {"type": "integer"}}}),
)
CALL = (
    "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/app.py\n</parameter>\n"
    "<parameter=content>\ndef f(x):\n    return '<tool_call>' + x  # not a call\n"
    "</parameter>\n</function>\n</tool_call><tool_call>\n<function=run>\n"
    "<parameter=command>\npytest -q\n</parameter>\n<parameter=timeout>\n60\n</parameter>\n"
    "</function>\n</tool_call>"
)


def output(chars: int) -> str:
    reasoning = "Let me think about the files and what to change next. " * (chars // 110)
    answer = ""
    for number in itertools.count():
        if len(reasoning) + len(answer) >= chars:
            break
        answer += f"Step {number}: I will edit the file and run the tests.\n" + CALL
    return reasoning + "\n</think>\n" + answer


def parse_seconds(text: str, piece: int = 4, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        counter = itertools.count()
        parser = Step3p5OutputParser(TOOLS, lambda: f"call_{next(counter)}")
        start = time.perf_counter()
        for position in range(0, len(text), piece):
            parser.feed(text[position : position + piece])
        parser.finish()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    small, large = output(100_000), output(1_000_000)
    small_seconds, large_seconds = parse_seconds(small), parse_seconds(large)
    ratio = large_seconds / small_seconds
    result = {
        "small_chars": len(small), "large_chars": len(large),
        "small_seconds": small_seconds, "large_seconds": large_seconds,
        "ratio": ratio, "target_ratio": 12,
        "chars_per_second_large": len(large) / large_seconds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step3p5_parser_scaling.json").write_text(json.dumps(result, indent=2))
    print(f"100K chars: {small_seconds:.3f}s   1M chars: {large_seconds:.3f}s   "
          f"ratio {ratio:.2f} (target ≤ 12)   {len(large) / large_seconds:,.0f} chars/s")


if __name__ == "__main__":
    main()
