"""Bench: kill ``gradaccum finetune`` with SIGKILL at seeded instants, resume, compare weights.

A run is killed again and again over its life (each kill is a real SIGKILL of a real process)
and resumed with ``--resume`` until it finishes; its final weights must be bit-identical to an
uninterrupted run's, on CPU in fp32. Kill points are drawn from a seeded generator:

- ``timer``: after a random delay, wherever the run happens to be;
- ``write``: at the n-th ``os.write`` (checkpoint and, later, shard files), optionally torn:
  half the bytes reach the file first;
- ``fsync`` / ``rename``: around the steps that make a checkpoint or artifact durable;
- ``backward``: before the n-th micro-batch backward, i.e. mid-window;
- ``step``: right after the n-th optimizer step, before its metrics and checkpoint.

Starting Python, torch and transformers takes seconds per process, so a fork server imports
them once and forks a fresh child per start; the children are what get killed.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WEIGHTS = "model/model.safetensors"  # --method full
KINDS = ("timer", "write", "fsync", "rename", "backward", "step")
RUN_FLAGS = ["--model", "random:gpt2", "--method", "full", "--precision", "fp32"]
RUN_FLAGS += ["--global-batch", "4", "--micro-batch", "2", "--seq-len", "32"]
RUN_FLAGS += ["--eval-samples", "2", "--save-every", "1", "--lr", "5e-3"]


@dataclass(frozen=True)
class KillPoint:
    """Where a child dies: the ``nth`` event of ``kind`` (or after ``delay`` s for timer)."""

    kind: str
    nth: int = 0
    delay: float = 0.0
    torn: bool = False


@dataclass(frozen=True)
class Outcome:
    """How one child ended: exit code (negative: killed by that signal) and wall time."""

    rc: int
    seconds: float

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL


class ForkServer:
    """A Python process that imported gradaccum once and forks one child per finetune start."""

    def __init__(self) -> None:
        code = "from gradaccum.bench.crash import serve; serve()"
        # One thread: identical arithmetic on any machine, and fast on a busy one.
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(
        self, argv: list[str], log: Path, kill: KillPoint | None = None, counts: Path | None = None
    ) -> Outcome:
        """Run ``gradaccum ARGV`` in a child, output to ``log``; ``counts`` gets event counts."""
        request = {"argv": argv, "log": str(log), "kill": kill and asdict(kill)}
        request["counts"] = str(counts) if counts else None
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("the crash bench's fork server died")
        return Outcome(**json.loads(reply))

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve() -> None:
    """Fork server loop: one JSON request per stdin line, one JSON outcome per stdout line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    import gradaccum.cli.finetune  # noqa: F401
    import gradaccum.cli.main  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        kill = KillPoint(**request["kill"]) if request["kill"] else None
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request["argv"], Path(request["log"]), kill, request["counts"])
        deadline = started + kill.delay if kill and kill.kind == "timer" else None
        status = _wait(pid, deadline)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc, "seconds": time.monotonic() - started}), flush=True)


def _wait(pid: int, deadline: float | None) -> int:
    """Wait for the child; SIGKILL it at ``deadline`` if it is still running then."""
    while deadline is not None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    return os.waitpid(pid, 0)[1]


def _child(argv: list[str], log: Path, kill: KillPoint | None, counts: str | None) -> None:
    """Run the CLI with tripwires installed; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        seen = _install_tripwires(kill)
        from gradaccum.cli.main import main

        code = main(argv)
        if counts:
            Path(counts).write_text(json.dumps(seen))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the child must never fall back into the server loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _install_tripwires(kill: KillPoint | None) -> Counter[str]:
    """Count events of each kind; SIGKILL this process at the chosen one."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: Counter[str] = Counter()

    def hit(kind: str) -> bool:
        seen[kind] += 1
        return kill is not None and kill.kind == kind and seen[kind] == kill.nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(module: Any, name: str, kind: str) -> None:
        real = getattr(module, name)

        def tripwire(*args: Any, **kwargs: Any) -> Any:
            if hit(kind):
                die()
            return real(*args, **kwargs)

        setattr(module, name, tripwire)

    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if hit("write"):
            if kill and kill.torn:
                view = memoryview(data).cast("B")
                real_write(fd, view[: len(view) // 2])
            die()
        return real_write(fd, data)

    os.write = write
    wrap(os, "fsync", "fsync")
    wrap(os, "rename", "rename")
    wrap(os, "replace", "rename")
    wrap(torch.autograd, "backward", "backward")
    register_optimizer_step_post_hook(lambda *_: die() if hit("step") else None)
    return seen


def draw_kill(rng: random.Random, counts: dict[str, int], seconds: float) -> KillPoint:
    """A kill point spread evenly over one uninterrupted run's events of a random kind."""
    kind = rng.choice(KINDS)
    if kind == "timer":
        return KillPoint("timer", delay=rng.uniform(0.0, seconds))
    return KillPoint(kind, nth=rng.randint(1, max(counts.get(kind, 1), 1)), torn=rng.random() < 0.5)


def write_corpus(path: Path) -> Path:
    """A small deterministic Python-like corpus."""
    path.write_text("\n".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300)))
    return path


def corrupt_checkpoints(folder: Path) -> int:
    """Published step folders that fail verification (atomic saves should leave none)."""
    from gradaccum.checkpoint import load_checkpoint
    from gradaccum.errors import UserError

    bad = 0
    for path in sorted(folder.glob("step-*")):
        try:
            load_checkpoint(folder, int(path.name.removeprefix("step-")))
        except (UserError, ValueError):
            bad += 1
    return bad


def history(out: Path) -> list[tuple[Any, ...]]:
    """What a run's metrics.jsonl says it computed, without timings."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [
        (r["kind"], r["step"], r.get("loss"), r.get("grad_norm"), r.get("heldout_ppl"))
        for r in rows
    ]


def leftovers(out: Path) -> list[str]:
    """Temporary files or folders a finished run still holds."""
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith(".tmp-")
    )


def crash_runs(workdir: Path, kills: int, seed: int = 0, max_steps: int = 8) -> dict[str, Any]:
    """Kill and resume runs until ``kills`` kills landed; compare each with an unkilled run."""
    started = time.perf_counter()
    rng = random.Random(seed)
    corpus = write_corpus(workdir / "corpus.txt")

    def argv(out: Path) -> list[str]:
        flags = ["--data", str(corpus), "--out", str(out), "--max-steps", str(max_steps)]
        return ["finetune", *flags, "--seed", str(seed), *RUN_FLAGS]

    by_kind: Counter[str] = Counter()
    result: dict[str, Any] = {"lives": 0, "corrupt_checkpoints": 0, "failed_resumes": []}
    result |= {"identical": True, "same_history": True, "leftovers": []}
    with ForkServer() as server:
        ref = workdir / "uninterrupted"
        first = server.run(argv(ref), ref.with_suffix(".log"), counts=workdir / "counts.json")
        if first.rc != 0:
            raise RuntimeError(f"the uninterrupted run failed: see {ref.with_suffix('.log')}")
        counts = json.loads((workdir / "counts.json").read_text())
        while by_kind.total() < kills:
            out = workdir / f"life-{result['lives']}"
            result["lives"] += 1
            for start in itertools.count():
                kill = draw_kill(rng, counts, first.seconds) if by_kind.total() < kills else None
                resume = ["--resume"] if start else []
                outcome = server.run(argv(out) + resume, out.with_suffix(".log"), kill)
                if not (outcome.killed and kill):
                    break
                by_kind[kill.kind + ("_torn" if kill.torn and kill.kind == "write" else "")] += 1
                result["corrupt_checkpoints"] += corrupt_checkpoints(out / "checkpoints")
            if outcome.rc != 0:
                result["failed_resumes"].append(f"{out.name}: exit {outcome.rc}, see its .log")
                result["identical"] = False
                break  # something is broken: more kills would not say more
            result["identical"] &= same_bytes(out / WEIGHTS, ref / WEIGHTS)
            result["same_history"] &= history(out) == history(ref)
            result["leftovers"] += [f"{out.name}/{name}" for name in leftovers(out)]
    result |= {"kills": by_kind.total(), "kills_by_kind": dict(sorted(by_kind.items()))}
    result |= {"seed": seed, "max_steps": max_steps, "events_per_run": counts}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def same_bytes(a: Path, b: Path) -> bool:
    """Bit-identical files (weights are compared as bytes: dtypes, shapes and values)."""
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """``gradaccum bench crash``: 12 kill points with --quick, else 60."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gradaccum-crash-") as tmp:
        return crash_runs(Path(tmp), kills=12 if quick else 60, seed=seed)


def format_table(result: dict[str, Any]) -> str:
    """The outcome in a few lines."""
    kinds = ", ".join(f"{k} {n}" for k, n in result["kills_by_kind"].items())
    return "\n".join(
        [
            f"kills            {result['kills']} over {result['lives']} runs ({kinds})",
            f"bit-identical    {result['identical']} (metrics history: {result['same_history']})",
            f"corrupt ckpts    {result['corrupt_checkpoints']}",
            f"failed resumes   {len(result['failed_resumes'])}",
            f"leftover temps   {len(result['leftovers'])}",
            f"seconds          {result['seconds']}",
        ]
    )
