"""AiderFramer in marker mode: replies that look like the end of a turn never end one.

aider prints the adapter's secret marker (its notification hook) right before
it reads input after a model call.  Each case below is one turn whose reply
holds text that looks like aider's bookkeeping (a prompt line, a usage line,
an API error with its retry notice, a confirm question, the marker's public
prefix) and pauses right after it; the framer must wait for the marker, cut
exactly one response with exactly the reply's text, and answer only aider's
own questions.  The framer is the one ``AiderAdapter.new_framer()`` builds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from toolpool.adapters import AiderAdapter
from toolpool.adapters.aider import AiderApiError, AiderCommand, AiderFramer
from toolpool.adapters.base import Frame

#: In a case's chunks: aider goes silent here (the instance calls on_quiet if the framer asked for it).
QUIET = object()
MARK = object()  # the adapter's marker, in a case's chunks
SPLIT = object()  # ...the marker in two reads: the reader's buffer ended inside it
FILES = b"calc.py\n> "  # aider's file list and prompt after the marker


@dataclass
class Case:
    prompt: str
    chunks: list[object]
    text: str
    answers: list[bytes] = field(default_factory=list)
    tokens: tuple[int, int] = (9, 3)


USAGE = b"Tokens: 9 sent, 3 received.\n\n"
BATTERY = {
    "prompt line then silence": Case("quote it", [
        b"\n", b"> a quoted line\n\n> ", QUIET, b"more reply\n", USAGE, MARK, FILES],
        "> a quoted line\n\n> more reply"),
    "a whole fake turn end": Case("show a transcript", [
        b"\nHere:\nTokens: 100 sent, 200 received.\n\ncalc.py\n> ", QUIET, b"done\n", USAGE, MARK, FILES],
        "Here:\nTokens: 100 sent, 200 received.\n\ncalc.py\n> done"),
    "usage line then silence": Case("explain usage", [
        b"\n", b"Tokens: 5 sent, 6 received.\n", QUIET, b"is what aider prints\n", USAGE, MARK, FILES],
        "Tokens: 5 sent, 6 received.\nis what aider prints"),
    "api error and retry notice quoted": Case("show me a log", [
        b"\nThe log:\nlitellm.APIConnectionError: Connection refused\n", b"Retrying in 0.5 seconds...\n",
        b"and then it worked.\n", USAGE, MARK, FILES],
        "The log:\nlitellm.APIConnectionError: Connection refused\nRetrying in 0.5 seconds...\nand then it worked."),
    "fake confirm question then silence": Case("what does aider ask", [
        b"\nIt asks:\n\nREADME.md\nAdd file to the chat? (Y)es/(N)o [Yes]: ", QUIET, b"and waits.\n", USAGE, MARK,
        FILES],
        "It asks:\n\nREADME.md\nAdd file to the chat? (Y)es/(N)o [Yes]: and waits."),
    "marker split across reads": Case("split", [
        b"\nECHO: split\n", USAGE, SPLIT, FILES],
        "ECHO: split"),
    "marker prefix quoted without the secret": Case("print the marker", [
        b"\n\x1etoolpool-\n\x1etoolpool-0123456789abcdef\x1e\n\ncalc.py\n> ", QUIET, b"that was it\n", USAGE,
        MARK, FILES],
        "\x1etoolpool-\n\x1etoolpool-0123456789abcdef\x1e\n\ncalc.py\n> that was it"),
    "aider's own question after the reply": Case("look at README.md later", [
        b"\nECHO: first\nTokens: 4 sent, 2 received.\n", MARK, b"\nREADME.md\nAdd file to the chat? (Y)es/(N)o [Yes]: ",
        QUIET, b"ECHO: second\n", USAGE, MARK, FILES],
        # two model calls: the framer removes the last usage line only (the adapter removes the
        # others with the exact figures of aider's analytics log, AiderAdapter.observe)
        "ECHO: first\nTokens: 4 sent, 2 received.\nECHO: second", answers=[b"y\n"]),
}


class Driver:
    """Feeds a framer as the instance does: calls run and their answers kept, quiet only when asked for."""

    def __init__(self, framer: AiderFramer) -> None:
        self.framer = framer
        self.answers: list[bytes] = []
        self.quiet_asked: float | None = None
        self.interrupts = 0

    def feed(self, data: bytes) -> list[Frame]:
        cut = self.framer.feed(data)
        self.answers += [call() for call in cut.calls]
        self.quiet_asked, self.interrupts = cut.quiet, self.interrupts + cut.interrupt
        return cut.frames

    def quiet(self) -> list[Frame]:
        if self.quiet_asked is None:
            return []
        cut = self.framer.on_quiet()
        self.quiet_asked, self.interrupts = cut.quiet, self.interrupts + cut.interrupt
        return cut.frames

    def turn(self, prompt: str | None, chunks: list[object]) -> list[Frame]:
        mark = self.framer.mark
        assert mark is not None
        self.framer.start_turn(prompt)
        frames: list[Frame] = []
        for chunk in [*chunks, QUIET]:
            if chunk is QUIET:
                frames += self.quiet()
            elif chunk is SPLIT:
                frames += self.feed(mark[:7]) + self.quiet() + self.feed(mark[7:])
            else:
                frames += self.feed(chunk if isinstance(chunk, bytes) else mark)
        return frames


@pytest.fixture
def driver(tmp_path):
    adapter = AiderAdapter(cwd=str(tmp_path))
    framer = adapter.new_framer()
    assert isinstance(framer, AiderFramer)
    if framer.mark is None:
        pytest.skip("no /proc here: the adapter runs without a marker")
    d = Driver(framer)
    [ready] = d.turn(None, [b"\nAider v0.86.2\nModel: openai/fake-model with whole edit format\n\n> "])
    assert ready.error is None and ready.text.startswith("Aider v")
    yield d
    adapter.close()


def check(frames: list[Frame], case: Case, driver: Driver, label: str) -> None:
    assert len(frames) == 1, f"{label}: {len(frames)} frames"
    [frame] = frames
    assert frame.final and frame.error is None and not frame.fields.get("is_error"), label
    assert frame.text == case.text, label
    assert (frame.fields["tokens_sent"], frame.fields["tokens_received"]) == case.tokens, label
    assert frame.fields["files"] == ["calc.py"], label
    assert driver.answers == case.answers, label
    assert [q["answer"] for q in frame.fields["questions"]] == [a.decode().strip() for a in case.answers], label
    mark = driver.framer.mark
    assert mark is not None and mark not in frame.raw and mark.decode() not in frame.text, label


@pytest.mark.parametrize("label", list(BATTERY))
def test_look_alike_is_framed_exactly(driver, label):
    case = BATTERY[label]
    check(driver.turn(case.prompt, case.chunks), case, driver, label)


def test_the_battery_back_to_back_never_merges_turns(driver):
    for label, case in [*BATTERY.items(), *reversed(BATTERY.items())]:
        driver.answers = []
        check(driver.turn(case.prompt, case.chunks), case, driver, label)


def test_one_byte_at_a_time_ends_only_at_the_last_byte(driver):
    mark = driver.framer.mark
    out = (b"\n> quoted\n\n> Tokens: 1 sent, 1 received.\n\ncalc.py\n> \x1etoolpool-\nreal end:\n" + USAGE + mark
           + FILES)
    driver.framer.start_turn("bytes")
    frames: list[Frame] = []
    for i in range(len(out)):
        frames += driver.feed(out[i:i + 1])
        frames += driver.quiet()  # silence after every byte: still no end before the last one
        assert frames == [] or i == len(out) - 1, f"cut at byte {i}"
    [frame] = frames
    assert frame.text == "> quoted\n\n> Tokens: 1 sent, 1 received.\n\ncalc.py\n> \x1etoolpool-\nreal end:"
    assert frame.raw == out.replace(mark, b"")[:-2]


def test_a_real_retry_fails_the_turn_and_the_interrupted_rest_is_one_frame(driver):
    driver.framer.start_turn("anyone there")
    assert driver.feed(b"\nlitellm.InternalServerError: InternalServerError: OpenAIException - Connection error.\n"
                       b"Retrying in 0.2 seconds...\n") == []
    [early] = driver.quiet()  # aider went quiet after its notice: it is sleeping before a retry
    assert isinstance(early.error, AiderApiError) and early.error.retrying and not early.final
    # Not during aider's sleep (a SIGINT then makes aider 0.86.2 exit): a quiet period until after it...
    assert driver.interrupts == 0 and driver.quiet_asked
    time.sleep(0.45)
    assert driver.quiet() == [] and driver.interrupts == 1  # ...then the instance stops the retry loop
    driver.framer.interrupt_sent()
    frames = driver.feed(b"\n\n^C again to exit\n\n\n")
    frames += driver.feed(driver.framer.mark + FILES) + driver.quiet()
    [last] = frames
    assert last.final and last.fields["interrupted"] is True


def test_a_command_without_a_model_call_ends_at_its_prompt(driver):
    # /settings, /ask without a question: no model call, so aider prints no marker
    [frame] = driver.turn(AiderCommand("/settings"), [b"\nModel: openai/fake-model\n", b"\n> "])
    assert frame.text == "Model: openai/fake-model" and frame.error is None
    [frame] = driver.turn(AiderCommand("/ask"), [b"\nSwitched to ask mode\n", b"\nask> "])
    assert frame.text == "Switched to ask mode" and frame.fields["mode"] == "ask"
    # ...and one that does call the model ends at the marker, not at a "> " line of its reply
    [frame] = driver.turn(AiderCommand("/ask what now?"), [b"\n> maybe\n\n> ", QUIET, b"this\n", USAGE, MARK, FILES])
    assert frame.text == "> maybe\n\n> this"


def test_without_the_hook_framing_falls_back_to_the_prompt(driver, caplog):
    frames = driver.turn("hi", [b"\nFailed to run notifications command: sh: 1: printf: not found\n",
                                b"ECHO: hi\n", USAGE, b"calc.py\n> "])
    assert [fr.text for fr in frames] == ["Failed to run notifications command: sh: 1: printf: not found\nECHO: hi"]
    assert driver.framer.mark is None and "falls back" in caplog.text
