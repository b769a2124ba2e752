#!/usr/bin/env python3
"""A stand-in for ``claude -p --input-format stream-json --output-format stream-json``.

It speaks the stream-json shapes the real Claude Code 2.x prints: a
``control_response`` to every ``control_request``; per turn ``system/init``,
the user message echoed with its ``uuid`` and ``"isReplay": true`` (only with
``--replay-user-messages``, as the real one), ``assistant``, ``result``.  Turns
run one after another, in the order they were asked for, like claude's own
queue.  What a prompt does depends on its first word:

``bg DELAY [HOLD]``   answer ``started``; DELAY seconds later run a turn by
                      itself (a finished background task): ``system/
                      task_notification``, ``system/init``, HOLD seconds of
                      silence, ``assistant`` and ``result`` "self turn N"
``race``              run a turn by itself first, then answer this prompt: a
                      prompt sent just as claude began a turn of its own
``long N [GAP]``      reply with N bytes of text; the ``assistant`` and the
                      ``result`` lines both repeat it (GAP seconds between them)
anything else         ``fake: <prompt>``
"""

import json
import queue
import sys
import threading
import time

REPLAY = "--replay-user-messages" in sys.argv
SESSION = "fake-session"
write_lock = threading.Lock()
jobs: "queue.Queue[tuple]" = queue.Queue()
self_turns = 0


def out(*objs: dict) -> None:
    with write_lock:
        for obj in objs:
            sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")  # compact, as claude prints
        sys.stdout.flush()


def init() -> dict:
    return {"type": "system", "subtype": "init", "session_id": SESSION, "model": "fake-model", "tools": []}


def assistant(text: str) -> dict:
    return {"type": "assistant", "session_id": SESSION,
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}}


def result(text: str) -> dict:
    return {"type": "result", "subtype": "success", "is_error": False, "result": text, "session_id": SESSION,
            "num_turns": 1, "total_cost_usd": 0.0, "usage": {"input_tokens": 1, "output_tokens": 1}}


def self_turn(hold: float) -> None:
    """A turn nobody asked for, as when a run_in_background Bash task finishes."""
    global self_turns
    self_turns += 1
    out({"type": "system", "subtype": "task_notification", "task_id": f"bg{self_turns}", "status": "completed",
         "session_id": SESSION}, init())
    time.sleep(hold)
    text = f"self turn {self_turns}"
    out(assistant(text), result(text))


def answer(msg: dict) -> None:
    text = msg["message"]["content"]
    words = text.split()
    head = [init()]
    if REPLAY:
        head.append(dict(msg, session_id=SESSION, parent_tool_use_id=None, isReplay=True))
    if words[:1] == ["race"]:
        self_turn(0.0)
    if words[:1] == ["bg"]:
        delay = float(words[1])
        hold = float(words[2]) if len(words) > 2 else 0.0
        timer = threading.Timer(delay, lambda: jobs.put(("self", hold)))
        timer.daemon = True  # stdin EOF ends the process, a pending task or not
        timer.start()
        out(*head, assistant("started"), result("started"))
    elif words[:1] == ["long"]:
        reply = "L" * int(words[1])
        out(*head, assistant(reply))
        time.sleep(float(words[2]) if len(words) > 2 else 0.0)
        out(result(reply))
    else:
        out(*head, assistant(f"fake: {text}"), result(f"fake: {text}"))


def read_stdin() -> None:
    for line in sys.stdin:
        msg = json.loads(line)  # like the real one, a malformed line ends the process
        if msg.get("type") == "control_request":
            out({"type": "control_response", "response": {"subtype": "success", "request_id": msg["request_id"],
                                                           "response": {}}})
        else:
            jobs.put(("user", msg))
    jobs.put(("eof", None))


def main() -> int:
    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        kind, arg = jobs.get()
        if kind == "eof":
            return 0
        if kind == "self":
            self_turn(arg)
        else:
            answer(arg)


if __name__ == "__main__":
    sys.exit(main())
