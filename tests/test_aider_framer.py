"""AiderAdapter's encoding and framing, without a process: real aider output replayed.

The captures in tests/captures/ were recorded from the real aider over pipes by
scripts/record-captures.py (offline, against FakeOpenAIServer, with the
adapter's own command line and encoding).  Their assertions hold for any
re-recording: reply texts come from the fake and the work tree the recorder
made, token counts (aider counts them itself) from the capture's own lines.
Where a test depends on particular bytes they are inlined.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import threading
import time

import pytest

from toolpool.adapters import AiderAdapter, aider
from toolpool.adapters.aider import AiderApiError, AiderCommand, AiderFramer, aider_command, encode_prompt, parse_output
from toolpool.adapters.base import Control, Cut, Frame
from toolpool.errors import ResponseTooLarge

CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captures")


class ListFramer(AiderFramer):
    """The framer, with ``feed``/``on_quiet`` returning the frames of their Cut (the rest kept in ``last``)."""

    last: Cut

    def feed(self, data: bytes) -> list[Frame]:  # type: ignore[override]
        self.last = super().feed(data)
        return self.last.frames

    def on_quiet(self) -> list[Frame]:  # type: ignore[override]
        self.last = super().on_quiet()
        return self.last.frames


def framer(**kw) -> ListFramer:
    kw.setdefault("settle", 0.15)
    return ListFramer(**kw)


def run(f: AiderFramer, chunks: list[bytes]) -> list[Frame]:
    """Feed chunks; when the output ends like a response, let the quiet period pass."""
    frames: list[Frame] = []
    for chunk in chunks:
        frames += f.feed(chunk)
    if f.has_candidate():
        frames += f.on_quiet()
    return frames


def turn(f: AiderFramer, prompt: str | None, *chunks: bytes) -> list[Frame]:
    f.start_turn(prompt)
    return run(f, list(chunks))


def ready(f: AiderFramer, prompt_line: bytes = b"> ") -> None:
    frames = turn(f, None, b"\nAider v0.86.2\nModel: openai/fake-model with whole edit format\n\n" + prompt_line)
    assert len(frames) == 1 and frames[0].error is None


def load_transcript(name: str) -> list[tuple[str, str | None, list[bytes], list[bytes]]]:
    """[(label, typed text, output chunks, answers typed)] per driver SEND mark of a transcript capture."""
    turns: list[tuple[str, str | None, list[bytes], list[bytes]]] = [("startup", None, [], [])]
    with open(os.path.join(CAPTURES, name), encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 3)
            if line.startswith("## ") and len(parts) == 4 and parts[2] == "SEND":
                label, typed = parts[3].split(" ", 1)
                turns.append((label, ast.literal_eval(typed), [], []))
            elif line.startswith("## ") and len(parts) == 4 and parts[2] == "ANSWER":
                turns[-1][3].append(ast.literal_eval(parts[3]).encode())
            elif len(parts) >= 3 and parts[1] == "out":
                turns[-1][2].append(ast.literal_eval(line.split(" ", 2)[2]))
    return turns


def capture_marker(name: str) -> bytes | None:
    """The end-of-turn marker a capture's command line made aider print (its ``# marker:`` header line).

    Checked against the command line in the header: it must be the one
    AiderAdapter builds for that marker, so the replay frames what the adapter would have read.
    """
    with open(os.path.join(CAPTURES, name), encoding="utf-8") as f:
        header = [line.rstrip("\n") for line in f if line.startswith("# ")]
    [marker_line] = [line for line in header if line.startswith("# marker: ")]
    marker = ast.literal_eval(marker_line[len("# marker: "):])
    if marker is not None:
        octal = "".join(f"\\{b:03o}" for b in marker)
        assert f"--notifications --notifications-command {aider.MARK_COMMAND % octal}" in header[0], name
    return marker


class Replay:
    """The framer ``AiderAdapter.new_framer()`` builds, fed a capture: its frames, and what it answered.

    The adapter draws a fresh secret marker per instance; the replay's framer
    gets the one the recording's aider printed instead.
    """

    def __init__(self, marker: bytes | None, tmp_path) -> None:
        adapter = AiderAdapter(cwd=str(tmp_path))
        self.framer = adapter.new_framer()
        assert isinstance(self.framer, AiderFramer) and self.framer.confirm is adapter.confirm
        self.framer.mark = marker
        self.answers: list[bytes] = []

    def _act(self, cut: Cut) -> list[Frame]:
        self.answers += [call() for call in cut.calls]  # as the instance does, off its reader thread
        return cut.frames

    def start_turn(self, prompt: str | None) -> None:
        self.framer.start_turn(prompt)

    def interrupt_sent(self) -> None:
        self.framer.interrupt_sent()

    def feed(self, data: bytes) -> list[Frame]:
        return self._act(self.framer.feed(data))

    def has_candidate(self) -> bool:
        return self.framer.has_candidate()

    def on_quiet(self) -> list[Frame]:
        return self._act(self.framer.on_quiet())


# -- encoding ------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, typed", [
    ("hello there", "hello there"),
    ("/ls is text", " /ls is text"),  # aider runs input starting with / or ! as a command
    ("!rm -rf /", " !rm -rf /"),
    ("line one\nline two", "{tp\nline one\nline two\ntp}"),
    ("a\r\nb", "{tp\na\nb\ntp}"),
    ("/first\nsecond", "{tp\n /first\nsecond\ntp}"),  # only the message's first character counts
    ("{abc", "{tp\n{abc\ntp}"),  # a lone "{abc" line would open a block tagged "abc"
    ("\r{x", "{tp\n\r{x\ntp}"),  # aider strips \r before looking for "{"
    ("{json}", "{tp\n{json}\ntp}"),
    ("x\ntp}\ny", "{tp1\nx\ntp}\ny\ntp1}"),  # the closing tag never occurs in the message
    ("x\ntp}\ntp1}", "{tp2\nx\ntp}\ntp1}\ntp2}"),
    (" {indented", " {indented"),
])
def test_encode_prompt(prompt, typed):
    assert encode_prompt(prompt) == typed
    assert AiderAdapter().encode(prompt) == (typed + "\n").encode()


def test_commands_are_typed_as_is():
    assert aider_command("/add", "calc.py") == "/add calc.py"
    assert aider_command("add", "calc.py") == AiderCommand("/add calc.py")
    assert isinstance(aider_command("/ls"), str)
    assert encode_prompt(AiderCommand("!make test")) == "!make test"
    assert AiderAdapter().encode(aider_command("/tokens")) == b"/tokens\n"
    assert AiderAdapter().warmup_prompts() == ["/tokens"]
    assert AiderAdapter(warmup=False).warmup_prompts() == []
    for bad in ("ls", "/add a\nb", "", "/x\r"):
        with pytest.raises(ValueError):
            AiderCommand(bad)


def test_unsendable_prompts():
    with pytest.raises(ValueError, match="empty prompt"):
        AiderAdapter().encode("")
    with pytest.raises(TypeError):
        AiderAdapter().encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be encoded"):
        AiderAdapter(encoding="ascii").encode("café")


# -- the captures ------------------------------------------------------------------------
def typed_prompt(typed: str) -> str:
    """The prompt the adapter typed as ``typed`` (the inverse of encode_prompt, for the captures)."""
    text = typed[:-1] if typed.endswith("\n") else typed
    block = re.fullmatch(r"\{(tp\d*)\n(.*)\n\1\}", text, re.DOTALL)
    if block:
        text = block.group(2)
    elif text.startswith(("/", "!")):
        return AiderCommand(text)
    return text[1:] if text[:1] == " " and text[1:2] in ("/", "!") else text


def usage_line(chunks: list[bytes]) -> tuple[int, int]:
    """(sent, received) of the ``Tokens:`` line aider printed in these chunks."""
    [(sent, received)] = re.findall(rb"^Tokens: (\d+) sent, (\d+) received\.$", b"".join(chunks), re.MULTILINE)
    return int(sent), int(received)


def replay_transcript(name: str, tmp_path) -> tuple[dict[str, Frame], dict[str, list[bytes]], dict[str, list[bytes]]]:
    """Each turn's one frame, output chunks and answers typed, by label; the turns are the pool's usual ones."""
    marker = capture_marker(name)
    f = Replay(marker, tmp_path)
    adapter = AiderAdapter()
    texts, chunks_of, answers = {}, {}, {}
    turns = load_transcript(name)
    assert [label for label, _, _, _ in turns] == ["startup", "warmup", "ls", "add", "prompt1", "multiline",
                                                    "mention", "slow", "after-interrupt"]
    for label, typed, chunks, recorded in turns:
        prompt = None if typed is None else typed_prompt(typed)
        if prompt is not None:
            assert adapter.encode(prompt) == typed.encode(), label  # the recording typed what the adapter types
        f.start_turn(prompt)
        if label == "slow":
            f.interrupt_sent()
        frames = run(f, chunks)  # type: ignore[arg-type]
        assert len(frames) == 1 and frames[0].error is None, label
        assert f.answers == recorded, label  # the replay answers what the recording's framer answered
        texts[label], chunks_of[label], answers[label] = frames[0], chunks, f.answers
        f.answers = []
        if marker is not None and label not in ("startup", "warmup", "ls", "add"):
            assert marker in b"".join(chunks), label  # aider printed the marker at every message turn's end
    return texts, chunks_of, answers


def check_common_turns(texts: dict[str, Frame], chunks_of: dict[str, list[bytes]], marker: bytes | None) -> None:
    """What every recording of the transcript shows, marker or not."""
    assert texts["startup"].text.startswith("Aider v")
    assert texts["warmup"].text.startswith("Approximate context window usage for openai/fake-model, in tokens:")
    assert texts["ls"].text == "Repo files not in the chat:\n\n  README.md\n  calc.py"
    assert texts["add"].text == "Added calc.py to the chat" and texts["add"].fields["files"] == ["calc.py"]
    hello = texts["prompt1"]
    assert hello.text == "ECHO: hello there"
    assert (hello.fields["tokens_sent"], hello.fields["tokens_received"]) == usage_line(chunks_of["prompt1"])
    assert hello.fields["files"] == ["calc.py"] and hello.fields["mode"] == ""
    whole = b"".join(chunks_of["prompt1"])
    assert whole.endswith(b"calc.py\n> ")
    assert hello.raw == (whole.replace(marker, b"") if marker else whole)[:-2]  # all of it but prompt and marker
    multi = texts["multiline"]
    assert multi.text == "ECHO: line one" and multi.raw.startswith(b"> > > \n")
    assert texts["mention"].fields["files"] == ["README.md", "calc.py"]
    assert texts["slow"].text == "" and texts["slow"].fields["interrupted"] is True
    assert texts["slow"].fields["is_error"] is True and "is_error" not in hello.fields
    assert texts["after-interrupt"].text == "ECHO: after interrupt"
    assert texts["after-interrupt"].fields["tokens_received"] == usage_line(chunks_of["after-interrupt"])[1]


def test_pipe_transcript_replayed(tmp_path):
    """The current adapter's recording: marker mode, confirm questions answered by the default policy."""
    name = "aider_pipe_transcript.txt"
    marker = capture_marker(name)
    assert marker is not None, "re-record with scripts/record-captures.py: this capture has no marker"
    texts, chunks_of, answers = replay_transcript(name, tmp_path)
    check_common_turns(texts, chunks_of, marker)
    assert all(marker not in frame.raw and marker.decode() not in frame.text for frame in texts.values())
    # aider asked about the file the message mentions; the policy said yes (aider's default),
    # and the question is reported in meta, not in the text
    assert answers["mention"] == [b"y\n"] and sum(len(a) for a in answers.values()) == 1
    mention = texts["mention"]
    assert mention.text == "ECHO: please look at README.md"
    [question] = mention.fields["questions"]
    assert (question["kind"], question["subject"], question["answer"]) == ("add_file", "README.md", "y")
    hello = texts["prompt1"]
    assert hello.fields["edited_files"] == [] and hello.fields["edit_errors"] == [] and hello.fields["commit"] is None


def test_unmarked_transcript_replayed_through_the_fallback(tmp_path):
    """A recording without the marker (the command line before 0a64fc1, --yes-always): the framer
    falls back to the prompt plus a quiet period, as when aider cannot run the notification hook."""
    name = "aider_pipe_transcript_unmarked.txt"
    assert capture_marker(name) is None
    texts, chunks_of, answers = replay_transcript(name, tmp_path)
    check_common_turns(texts, chunks_of, None)
    assert not any(answers.values())  # --yes-always: aider asked nothing
    # aider's note about the mentioned file cannot be told apart from the reply
    assert texts["mention"].text == "README.md\nECHO: please look at README.md"


def load_probe(name: str) -> list[tuple[str, list[bytes], list[bytes]]]:
    """[(typed text, output chunks, answers typed)] of a probe capture (``t >>> 'typed'`` / ``t b'out'`` /
    ``## t ANSWER 'y\\n'`` lines)."""
    turns: list[tuple[str, list[bytes], list[bytes]]] = []
    with open(os.path.join(CAPTURES, name), encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) == 3 and parts[1] == ">>>":
                turns.append((ast.literal_eval(parts[2]), [], []))
            elif turns and line.startswith("## ") and parts[2].startswith("ANSWER "):
                turns[-1][2].append(ast.literal_eval(parts[2][len("ANSWER "):]).encode())
            elif turns and len(parts) >= 2 and parts[1][:2] in ("b'", 'b"'):
                turns[-1][1].append(ast.literal_eval(line.split(" ", 1)[1]))
    return turns  # the capture starts mid-turn: output before the first ">>>" is dropped


def test_multiline_probe_transcript_commands(tmp_path):
    name = "aider_multiline_probe.txt"
    marker = capture_marker(name)
    assert marker is not None, "re-record with scripts/record-captures.py: this capture has no marker"
    f = Replay(marker, tmp_path)
    ready(f)  # type: ignore[arg-type]
    frames_of = []
    probes = load_probe(name)
    assert [typed for typed, _, _ in probes][-1] == "<EOF>"
    for typed, chunks, recorded in probes[:-1]:
        prompt = typed_prompt(typed)
        if typed == "{tp\n/ls is text here\n}\ntp}\n":
            # Typed as is, a block starting with "/" is aider's own command: it ran /ls, called no
            # model, so printed no marker, and the framer (told a message) rightly waits for one.
            # The adapter never types this (a space in front makes it a message: the next probe).
            assert turn(f, prompt, *chunks) == [] and not f.has_candidate()  # type: ignore[arg-type]
            framed_by = Replay(None, tmp_path)  # prompt-and-quiet framing shows what aider printed
            ready(framed_by)  # type: ignore[arg-type]
        else:
            framed_by = f
        frames = turn(framed_by, prompt, *chunks)  # type: ignore[arg-type]
        assert len(frames) == 1 and frames[0].error is None, typed
        assert framed_by.answers == recorded, typed
        framed_by.answers = []
        frames_of.append(frames[0])
    texts = [frame.text for frame in frames_of]
    assert texts[0].startswith("Approximate context window usage for openai/fake-model, in tokens:\n\n$ 0.0000")
    assert "tokens total" in texts[0]
    assert texts[1] == "Repo files not in the chat:\n\n  README.md\n  calc.py"
    # a shell command: aider asks whether to add its output; the default policy says aider's default (yes)
    assert texts[2] == "shell-bang\nAdded 1 line of output to the chat."
    assert probes[2][2] == [b"y\n"] and frames_of[2].fields["questions"][0]["kind"] == "command_output"
    assert probes[3][0] == AiderAdapter().encode("/ls is text here\n}").decode()
    assert texts[3] == "ECHO: /ls is text here"  # the fake echoes the message's first line
    assert (frames_of[3].fields["tokens_sent"], frames_of[3].fields["tokens_received"]) == usage_line(probes[3][1])


# -- framing details ---------------------------------------------------------------------
def test_continuation_prompts_split_across_reads_are_skipped():
    f = framer()
    ready(f, b"notes.txt\nask> ")
    f.start_turn("a\nb")  # typed as 4 lines: 3 continuation prompts "ask> "
    out = b"ask> ask> ask> \nECHO: a\nTokens: 1.2k sent, 12k received.\n\nnotes.txt\nask> "
    frames: list[Frame] = []
    for i in range(len(out)):  # one byte at a time
        frames += f.feed(out[i:i + 1])
        assert not (f.has_candidate() and i < len(out) - 1), f"false end at byte {i}"
    frames += f.on_quiet()
    assert [fr.text for fr in frames] == ["ECHO: a"]
    assert frames[0].fields["mode"] == "ask" and frames[0].fields["files"] == ["notes.txt"]
    assert (frames[0].fields["tokens_sent"], frames[0].fields["tokens_received"]) == (1200, 12000)
    assert frames[0].raw.startswith(b"ask> ask> ask> \n")


def test_a_message_needs_longer_quiet_until_its_usage_line():
    f = framer(settle=0.15, unconfirmed_settle=1.0)
    ready(f)
    f.start_turn("quote something")
    assert f.feed(b"\n> quoted line\n\n> ") == []
    assert f.has_candidate() and f.settle == 1.0  # a reply line "> " may just be a pause in the stream
    assert f.feed(b"more\nTokens: 9 sent, 3 received.\n\n> ") == []
    assert f.has_candidate() and f.settle == 0.15
    [frame] = f.on_quiet()
    assert frame.text == "> quoted line\n\n> more"
    f.start_turn(AiderCommand("/ls"))
    f.feed(b"\nnothing\n\n> ")
    assert f.settle == 0.15  # commands print no usage line


def test_settle_zero_cuts_at_once_once_confirmed():
    f = framer(settle=0.0, unconfirmed_settle=0.5)
    ready(f)
    f.start_turn("hi")
    assert f.feed(b"\nECHO: hi\n") == []
    [frame] = f.feed(b"Tokens: 5 sent, 2 received.\n\n> ")
    assert frame.text == "ECHO: hi"


def test_cost_cache_and_several_model_calls():
    raw = ("\nfirst reply\nTokens: 2.5k sent, 1.0k cache write, 10 received. Cost: $0.0042 message, $0.01 session.\n"
           "\ncalc.py\nsecond reply\nTokens: 3 sent, 4 cache hit, 5 received.\nCost: $0.10 message, $0.11 session.\n"
           "Applied edit to calc.py\n\nREADME.md (read only)\ncalc.py\n")
    text, fields, error = parse_output(raw, "diff> ")
    assert error is None
    assert text == "first reply\n\ncalc.py\nsecond reply\nApplied edit to calc.py"
    assert fields["tokens_sent"] == 2503 and fields["tokens_received"] == 15 and fields["model_calls"] == 2
    assert fields["cost_usd"] == pytest.approx(0.1042) and fields["session_cost_usd"] == 0.11
    assert fields["files"] == ["README.md", "calc.py"] and fields["read_only_files"] == ["README.md"]
    assert fields["mode"] == "diff"


def test_reply_whitespace_kept_inside_blank_lines_trimmed():
    text, _, _ = parse_output("\n\n  indented\n\n\nafter blanks  \n\n\nTokens: 8 sent, 7 received.\n\n")
    assert text == "  indented\n\n\nafter blanks  "
    text, fields, _ = parse_output("\n\n\n")
    assert text == "" and fields["files"] == [] and "tokens_sent" not in fields


def test_api_error_without_reply_fails_the_turn():
    f = framer()
    ready(f)
    frames = turn(f, "who am i", b"\n", b"litellm.AuthenticationError: AuthenticationError: OpenAIException - "
                  b"injected \nerror 401\n", b"The API provider is not able to authenticate you. Check your API "
                  b"key.\n", b"\n", b"\n", b"> ")
    assert len(frames) == 1 and frames[0].final
    err = frames[0].error
    assert isinstance(err, AiderApiError) and not err.retrying
    assert err.detail == ("litellm.AuthenticationError: AuthenticationError: OpenAIException - injected error 401 "
                          "The API provider is not able to authenticate you. Check your API key.")
    # ...but a reply that merely quotes such a line is a reply
    frames = turn(f, "quote", b"\nlitellm.BadRequestError: is a class\nTokens: 5 sent, 6 received.\n\n> ")
    assert frames[0].error is None and frames[0].text == "litellm.BadRequestError: is a class"


def test_retrying_fails_early_and_the_rest_is_discarded():
    f = framer(max_api_retries=1)
    ready(f)
    f.start_turn("anyone there")
    err_block = (b"litellm.InternalServerError: InternalServerError: OpenAIException - Connection \nerror.\n"
                 b"The API provider's servers are down or overloaded.\n")
    assert f.feed(b"\n" + err_block + b"Retrying in 0.2 seconds...\n") == []  # one retry tolerated
    [early] = f.feed(err_block + b"Retrying in 0.5 seconds...\n")
    assert early.final is False and isinstance(early.error, AiderApiError) and early.error.retrying
    assert "Connection error. The API provider's servers are down" in str(early.error)
    assert "unless interrupted" in str(early.error)
    assert f.feed(err_block + b"Retrying in 1.0 seconds...\n") == []  # reported once
    f.interrupt_sent()
    [last] = run(f, [b"\n\n^C again to exit\n", b"\n", b"\n", b"> "])
    assert last.final and last.fields["interrupted"] is True  # the instance discards it: the turn failed


def test_max_api_retries_none_waits_for_aider():
    f = framer(max_api_retries=None)
    ready(f)
    f.start_turn("x")
    assert f.feed(b"\nlitellm.APIError: boom\nRetrying in 0.2 seconds...\n" * 5) == []


def test_late_interrupt_notice_is_not_the_next_answer():
    f = framer()
    ready(f)
    f.start_turn("quick")
    f.interrupt_sent()  # ...but the SIGINT reaches aider only after the reply was complete
    [first] = run(f, [b"\nECHO: quick\nTokens: 5 sent, 2 received.\n\n> "])
    assert first.text == "ECHO: quick" and first.fields["interrupted"] is False
    f.start_turn("next\nlines")  # 3 continuation prompts, printed after the late notice
    assert run(f, [b"\n\n^C again to exit\n\n> "]) == []  # not the answer to "next"
    frames = run(f, [b"> > > \nECHO: next\nTokens: 5 sent, 2 received.\n\n> "])
    assert [fr.text for fr in frames] == ["ECHO: next"]


def test_overflow_is_reported_and_the_rest_discarded():
    f = ListFramer(max_bytes=2048, settle=0.0)
    ready(f)
    f.start_turn("big")
    frames = f.feed(b"\n" + b"x" * 3000 + b"\n")
    assert len(frames) == 1 and isinstance(frames[0].error, ResponseTooLarge) and not frames[0].final
    frames = run(f, [b"Tokens: 1 sent, 2 received.\n\n> "])
    assert len(frames) == 1 and frames[0].final


# -- interrupt ------------------------------------------------------------------------------
class Signals:
    """A Control whose scheduler is a real timer thread, and which records the signals sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, int]] = []
        self.turn = 1
        self.running = True
        self.timers: list[threading.Timer] = []
        # To the process group: a shell command aider runs must stop too.  Never to aider alone.
        self.control = Control(lambda data: None, self.wrong, self.signal, self.call_later,
                               lambda: self.turn, lambda: self.running)

    def call_later(self, delay: float, fn) -> threading.Timer:
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()
        return timer

    def wrong(self, sig: int) -> bool:
        raise AssertionError("SIGINT must go to aider's process group, not to aider alone")

    def signal(self, sig: int) -> bool:
        self.sent.append((time.monotonic(), sig))
        return True

    def join(self) -> None:
        for timer in self.timers:
            timer.cancel()
            timer.join(5)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def test_interrupt_sends_one_sigint_and_spaces_them(monkeypatch):
    monkeypatch.setattr(aider, "SIGINT_SPACING", 0.5)  # 2.5 s in real use
    adapter = AiderAdapter()
    sig = Signals()
    try:
        adapter.interrupt(sig.control)
        adapter.interrupt(sig.control)  # a second request right away is held back...
        assert [s for _, s in sig.sent] == [signal.SIGINT]
        sig.turn = 2  # the first turn ended; the next one is interrupted too
        adapter.interrupt(sig.control)  # ...and so is one for the next turn, until the spacing has passed
        assert len(sig.sent) == 1
        assert wait_for(lambda: len(sig.sent) == 2, 5.0)
        assert sig.sent[1][0] - sig.sent[0][0] >= 0.5
        time.sleep(0.7)
        assert len(sig.sent) == 2  # the held-back request of the first turn was dropped
    finally:
        sig.join()


def test_no_deferred_sigint_once_the_turn_is_over(monkeypatch):
    monkeypatch.setattr(aider, "SIGINT_SPACING", 0.3)
    adapter = AiderAdapter()
    sig = Signals()
    try:
        adapter.interrupt(sig.control)
        adapter.interrupt(sig.control)  # deferred
        sig.running = False  # the turn ends before the deferred one is due
        time.sleep(0.6)
        assert len(sig.sent) == 1
    finally:
        sig.join()


def test_input_open_while_aider_reads_a_block():
    f = framer()
    ready(f)
    f.start_turn("one\ntwo")  # {tp / one / two / tp}: 3 continuation prompts
    assert f.input_open()
    f.feed(b"> > ")
    assert f.input_open()  # the closing line is not read yet: a SIGINT now would run the rest
    f.feed(b"> ")
    assert not f.input_open()


# -- command line and environment ----------------------------------------------------------
def test_command_line(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    a = AiderAdapter("/opt/aider", model="openai/m", api_base="http://127.0.0.1:1/v1", api_key="sk-secret",
                     cwd=str(repo / "sub"), files=["calc.py"], edit_format="ask", extra_args=["--map-tokens", "0"])
    argv = a.command(3)
    assert argv[0] == "/opt/aider" and "--yes-always" not in argv and "--no-git" not in argv
    assert argv[argv.index("--model") + 1] == "openai/m" and argv[argv.index("--edit-format") + 1] == "ask"
    assert argv[argv.index("--file") + 1] == "calc.py" and argv[-2:] == ["--map-tokens", "0"]
    assert "slot-3" in argv[argv.index("--chat-history-file") + 1]
    assert "sk-secret" not in repr(argv) and "sk-secret" not in repr(a.describe())
    assert a.describe()["api_key"] == "***"
    plain = AiderAdapter(cwd=str(tmp_path))
    assert "--no-git" in plain.command(0)
    a.close()
    plain.close()


def test_private_home(tmp_path, monkeypatch):
    user = tmp_path / "user"
    (user / ".aider").mkdir(parents=True)
    (user / ".aider.conf.yml").write_text("map-tokens: 0\n")
    (user / ".aider" / "oauth-keys.env").write_text("X=1\n")
    monkeypatch.setenv("HOME", str(user))
    a = AiderAdapter(cli_path="/nonexistent/aider", api_key="sk-secret")
    env = a.environment(1)
    home = env["HOME"]
    assert home != str(user) and env["AIDER_OPENAI_API_KEY"] == "sk-secret"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert os.path.realpath(os.path.join(home, ".aider.conf.yml")) == str(user / ".aider.conf.yml")
    assert os.path.islink(os.path.join(home, ".aider", "oauth-keys.env"))
    prices = os.path.join(home, ".aider", "caches", "model_prices_and_context_window.json")
    with open(prices) as fh:
        assert fh.read() not in ("", "{}")  # aider refetches an empty list
    os.utime(prices, (0, 0))
    a.environment(1)
    assert time.time() - os.path.getmtime(prices) < 60  # refreshed at every start
    assert sorted(os.listdir(user)) == [".aider", ".aider.conf.yml"]
    assert os.listdir(user / ".aider") == ["oauth-keys.env"]
    root = os.path.dirname(os.path.dirname(home))
    a.close()
    assert not os.path.exists(root)


def test_given_home_keeps_a_real_price_list(tmp_path):
    caches = tmp_path / ".aider" / "caches"
    caches.mkdir(parents=True)
    prices = caches / "model_prices_and_context_window.json"
    prices.write_text('{"gpt-x": {"max_tokens": 1}}')
    os.utime(prices, (0, 0))
    a = AiderAdapter(home=str(tmp_path), env={"LITELLM_LOCAL_MODEL_COST_MAP": "False"})
    env = a.environment(0)
    assert env["HOME"] == str(tmp_path) and env["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"
    assert prices.read_text() == '{"gpt-x": {"max_tokens": 1}}'
    assert time.time() - prices.stat().st_mtime < 60
    a.close()


def test_a_command_that_calls_the_model_waits_like_a_message():
    f = framer(settle=0.15, unconfirmed_settle=1.0)
    ready(f)
    f.start_turn(aider_command("/ask", "what is this?"))
    f.feed(b"\n> a quoted line from the model\n\n> ")
    assert f.settle == 1.0  # /ask streams a model reply: a "> " line may be a pause
    f.start_turn(aider_command("/add", "calc.py"))
    f.feed(b"\nAdded calc.py to the chat\n\ncalc.py\n> ")
    assert f.settle == 0.15


def test_a_second_model_call_after_a_usage_line_withdraws_the_confirmation():
    f = framer(settle=0.15, unconfirmed_settle=1.0)
    ready(f)
    f.start_turn("please look at README.md")
    f.feed(b"\nECHO: first\nTokens: 9 sent, 3 received.\n")
    assert f.settle == 0.15
    f.feed(b"\nREADME.md\nAdd file to the chat? (Y)es/(N)o [Yes]: y\n")
    assert f.settle == 1.0  # aider goes on with another model call


def test_a_retry_notice_quoted_in_a_reply_is_not_an_api_error():
    f = framer(settle=0.0, unconfirmed_settle=0.0)
    ready(f)
    f.start_turn("show me a log")
    frames = f.feed(b"\nThe client logs:\nRetrying in 2 seconds...\nthen it works.\n"
                    b"Tokens: 9 sent, 3 received.\n\n> ")
    assert [fr.error for fr in frames] == [None] and "Retrying in 2 seconds" in frames[0].text
    assert not f.last.interrupt


def test_aider_without_a_model_fails_start_up_at_once():
    from toolpool.errors import SpawnError
    f = framer()
    f.start_turn(None)
    frames = f.feed(b"No LLM model was specified and no API keys were provided.\n")
    assert frames and isinstance(frames[0].error, SpawnError) and "pass model=" in str(frames[0].error)


def test_an_interrupt_waits_for_the_end_of_aiders_retry_sleep():
    """A SIGINT while aider sleeps between retries makes aider 0.86.2 handle ^C twice and exit (seen
    with the real aider): the framer holds it until the sleep is over."""
    f = ListFramer(max_api_retries=None, settle=0.0)
    ready(f)
    f.start_turn("anyone there")
    f.feed(b"\nlitellm.APIError: boom\nRetrying in 0.3 seconds...\n")
    assert f.defer_interrupt() is True  # asleep: not now
    assert f.last.quiet is not None and f.last.quiet >= 0.3  # a quiet period ends after the sleep
    time.sleep(0.5)
    assert f.defer_interrupt() is False  # in its next attempt: signal now
    cut = AiderFramer.on_quiet(f)
    assert cut.interrupt is True  # the held interrupt is asked for
