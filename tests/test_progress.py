"""Progress reports: plain lines off a terminal at the expected counts, a bar on a terminal, nothing when disabled."""

import io
import re

import pytest

from elmtune.progress import Progress, format_duration


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


LINE = re.compile(r"^eval boolq: (\d+)/(\d+) questions \((\d+)%\)")


def _counts(text: str) -> list[int]:
    return [int(LINE.match(line).group(1)) for line in text.splitlines()]


def _run(total: int, seconds_per_unit: float, *, stream=None, enabled=True) -> str:
    stream = stream if stream is not None else io.StringIO()
    clock = FakeClock()
    with Progress(total, "eval boolq", "questions", stream=stream, clock=clock, enabled=enabled) as progress:
        for _ in range(total):
            clock.now += seconds_per_unit
            progress.update()
    return stream.getvalue()


def test_a_line_every_tenth_of_a_job_that_takes_a_second_per_tenth_or_more():
    # 100 questions at 0.5 s each: a tenth takes 5 s, more than the 2 s minimum gap and less than the 10 s interval
    text = _run(100, 0.5)
    assert _counts(text) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    first = text.splitlines()[0]
    # 10 questions in 5 s: 2.0 per second, 90 left: 45 s
    assert first == "eval boolq: 10/100 questions (10%), 2.0 questions/s, 5s elapsed, eta 45s"
    assert text.splitlines()[-1] == "eval boolq: 100/100 questions (100%), 2.0 questions/s, 50s elapsed"


def test_a_slow_job_reports_every_ten_seconds_between_tenths():
    # 1000 questions at 4 s each: a tenth takes 400 s, so the 10 s interval decides: after 12, 24, ... s (every 3)
    text = _run(1000, 4.0)
    counts = _counts(text)
    assert counts[:4] == [3, 6, 9, 12]
    assert all(0 < b - a <= 3 for a, b in zip(counts, counts[1:], strict=False))  # never 10 s without a line
    assert set(range(100, 1001, 100)) <= set(counts)  # and each tenth, as it is reached
    assert counts[-1] == 1000  # the last line at the end


def test_a_fast_job_writes_nothing():
    # 50 questions in 1 s in all: no line is due before the 2 s minimum gap, and no last line without earlier ones
    assert _run(50, 0.02) == ""


def test_tenths_are_rate_limited_to_one_line_per_two_seconds():
    # 100 questions at 0.125 s each: a tenth takes 1.25 s; a tenth less than 2 s after the last line is not shown
    assert _counts(_run(100, 0.125)) == [20, 40, 60, 80, 100]


def test_the_last_line_is_not_repeated_when_the_job_ends_on_a_line():
    text = _run(100, 0.5)
    assert _counts(text).count(100) == 1


def test_disabled_progress_writes_nothing_on_a_terminal_or_off_it():
    assert _run(100, 0.5, enabled=False) == ""
    assert _run(100, 0.5, stream=Terminal(), enabled=False) == ""


def test_a_terminal_gets_a_bar_and_no_plain_lines():
    text = _run(100, 0.5, stream=Terminal())
    assert "eval boolq:   0%|" in text and "0/100" in text  # tqdm's bar (it redraws on the real clock)
    assert not any(LINE.match(line) for line in text.replace("\r", "\n").splitlines())


def test_track_counts_each_item_after_it_is_used():
    stream, clock = io.StringIO(), FakeClock()
    seen = []
    with Progress(4, "merge", "tensors", stream=stream, clock=clock) as progress:
        for item in progress.track(["a", "b", "c", "d"]):
            seen.append((item, progress.count))
            clock.now += 3.0
    assert seen == [("a", 0), ("b", 1), ("c", 2), ("d", 3)]
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "merge: 1/4 tensors (25%)",
        "merge: 2/4 tensors (50%)",
        "merge: 3/4 tensors (75%)",
        "merge: 4/4 tensors (100%)",
    ]


def test_lines_go_to_stderr_by_default(capsys):
    clock = FakeClock()
    with Progress(2, "export GGUF f16", "tensors", clock=clock) as progress:
        clock.now += 3.0
        progress.update()
        clock.now += 3.0
        progress.update()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0].startswith("export GGUF f16: 1/2 tensors (50%), 0.3 tensors/s")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (4.4, "4s"), (59.6, "1m00s"), (75.2, "1m15s"), (3725, "1h02m05s")]
)
def test_durations_read_as_hours_minutes_seconds(seconds, text):
    assert format_duration(seconds) == text
