"""Soak test of a ComfyUI server running SyncAV: many generations in a row through the headless runner, and how much
the server's resident memory grew meanwhile.

Each run is ``run_workflow`` on the shipped generate workflow (the embedded default, converted with the server's
/object_info) with its own seed (``--set "SyncAV SyncCFG Sampler.seed=N"``); ``--parallel`` runs keep that many
prompts queued at once (the server still executes one at a time). A run counts as ok when it exits 0 and every
mp4 it downloaded has a video and an audio track of the clip's length. One warm-up run comes before the first
memory reading: the first generation loads the model and fills ComfyUI's caches, which is not growth.

Memory is the server process's VmRSS (/proc/PID/status, so Linux only): ``--server-pid`` or, when omitted, the
process listening on the URL's port on this machine. Last line:
``RESULT runs=50 ok=50 rss_before_mb=... rss_after_mb=... growth_pct=...``; the exit code is 1 when a run failed or
the growth passed ``--max-growth-pct``.

    python tests/soak_runner.py --server http://127.0.0.1:8188 --count 50
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workflow_files import GENERATE, WORKFLOWS_DIR

from comfyui_syncav.headless.runner import EXIT_OK, run_workflow
from comfyui_syncav.files.media_io import probe_mp4

DEFAULT_WORKFLOW = WORKFLOWS_DIR / f"{GENERATE}.json"
DEFAULT_SEED_INPUT = "SyncAV SyncCFG Sampler.seed"
CLIP_SECONDS = 2.0            # the length the generate workflow makes
# h264 at 16 fps is exact to a frame; aac pads to whole 1024-sample frames and adds its priming samples.
VIDEO_TOLERANCE_SECONDS = 0.07
AUDIO_TOLERANCE_SECONDS = 0.3
WROTE_LINE = re.compile(r"^wrote (.+) \((\d+) bytes, node ")


# ------------------------------------------------------------------------------------------------ memory

def listening_pid(port: int) -> int | None:
    """The pid of the process with a TCP socket listening on ``port`` (IPv4 or IPv6), from /proc; None if none
    can be seen (another user's process, or not Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:   # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:       # gone meanwhile, or not ours to read
            continue
    return None


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024          # kB
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def server_ram_mb(server: str) -> tuple[float, float] | None:
    """(total, free) system memory in MiB as the server's /system_stats reports it; None if it does not answer."""
    try:
        with urllib.request.urlopen(server.rstrip("/") + "/system_stats", timeout=10) as response:
            system = json.load(response)["system"]
        return system["ram_total"] / 2**20, system["ram_free"] / 2**20
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------------ runs

def check_clip(path: Path) -> str | None:
    """None when ``path`` is an mp4 with video and audio of the clip's length, else what is wrong."""
    try:
        info = probe_mp4(path)
    except Exception as error:  # noqa: BLE001 - any decoder failure is a failed run here
        return f"{path.name}: cannot probe ({error})"
    video, audio = info.get("video"), info.get("audio")
    if video is None or audio is None:
        return f"{path.name}: expected a video and an audio track, got {info}"
    if abs(video["seconds"] - CLIP_SECONDS) > VIDEO_TOLERANCE_SECONDS:
        return f"{path.name}: video {video['seconds']:.3f} s, expected {CLIP_SECONDS} s"
    if abs(audio["seconds"] - CLIP_SECONDS) > AUDIO_TOLERANCE_SECONDS:
        return f"{path.name}: audio {audio['seconds']:.3f} s, expected {CLIP_SECONDS} s"
    return None


def one_run(workflow: Path, server: str, seed_input: str, seed: int, out_dir: Path) -> tuple[bool, float, str]:
    """One generation: (ok, seconds, what went wrong or the mp4 names)."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    code = run_workflow(workflow, server, [f"{seed_input}={seed}"], out_dir=out_dir, timeout_seconds=600,
                        progress=False, stdout=out, stderr=err)
    seconds = time.perf_counter() - started
    if code != EXIT_OK:
        tail = " | ".join(err.getvalue().strip().splitlines()[-3:])
        return False, seconds, f"exit {code}: {tail}"
    clips = [Path(m.group(1)) for m in map(WROTE_LINE.match, out.getvalue().splitlines())
             if m and m.group(1).endswith(".mp4")]
    if not clips:
        return False, seconds, "exit 0 but no mp4 was downloaded"
    problems = [problem for problem in map(check_clip, clips) if problem]
    if problems:
        return False, seconds, "; ".join(problems)
    return True, seconds, ", ".join(clip.name for clip in clips)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI server URL")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="pid of the server process (default: the one listening on the URL's port)")
    parser.add_argument("--count", type=int, default=50, help="measured generations (default 50)")
    parser.add_argument("--parallel", type=int, default=2,
                        help="runs in flight at once, i.e. prompts queued on the server together (default 2)")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help=f"workflow to run (default example_workflows/{GENERATE}.json)")
    parser.add_argument("--seed-input", default=DEFAULT_SEED_INPUT, metavar="NODE.INPUT",
                        help=f"the input that gets each run's seed (default {DEFAULT_SEED_INPUT!r})")
    parser.add_argument("--out", type=Path, default=None, help="folder for the downloads (default: a temp folder)")
    parser.add_argument("--max-growth-pct", type=float, default=5.0,
                        help="exit 1 when the resident memory grew by more than this (default 5)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.parallel < 1:
        parser.error("--count and --parallel must be at least 1")

    pid = args.server_pid
    if pid is None:
        port = urllib.parse.urlsplit(args.server).port or 80
        pid = listening_pid(port)
        if pid is None:
            parser.error(f"no process of this user listens on port {port}; give --server-pid")
    out_root = args.out or Path(tempfile.mkdtemp(prefix="syncav_soak_"))
    print(f"server {args.server}, pid {pid}; {args.count} runs of {args.workflow.name}, {args.parallel} at once; "
          f"downloads in {out_root}", flush=True)

    ok, seconds, detail = one_run(args.workflow, args.server, args.seed_input, 0, out_root / "warmup")
    print(f"warm-up: {'ok' if ok else 'FAILED'} in {seconds:.1f} s ({detail})", flush=True)
    rss_before = rss_mb(pid)
    ram = server_ram_mb(args.server)
    print(f"before: rss {rss_before:.1f} MiB" + (f"; /system_stats ram free {ram[1]:.0f} of {ram[0]:.0f} MiB"
                                                if ram else ""), flush=True)

    results: list[tuple[bool, float, str]] = [None] * args.count  # type: ignore[list-item]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(one_run, args.workflow, args.server, args.seed_input, index + 1,
                               out_root / f"run_{index + 1:03d}"): index for index in range(args.count)}
        for done, future in enumerate(futures, start=1):   # in submission order, so progress reads naturally
            index = futures[future]
            results[index] = future.result()
            ok, run_seconds, detail = results[index]
            if not ok or done % 10 == 0 or done == args.count:
                print(f"run {index + 1}/{args.count}: {'ok' if ok else 'FAILED'} in {run_seconds:.1f} s "
                      f"({detail}); server rss {rss_mb(pid):.1f} MiB", flush=True)
    wall_seconds = time.perf_counter() - started
    rss_after = rss_mb(pid)
    ram = server_ram_mb(args.server)

    passed = sum(ok for ok, _, _ in results)
    durations = [s for _, s, _ in results]
    growth_pct = 100.0 * (rss_after - rss_before) / rss_before
    print(f"after: rss {rss_after:.1f} MiB" + (f"; /system_stats ram free {ram[1]:.0f} of {ram[0]:.0f} MiB"
                                               if ram else ""))
    print(f"runs: {wall_seconds:.1f} s wall for {args.count} ({wall_seconds / args.count:.2f} s each); per run "
          f"(queued to downloaded) median {statistics.median(durations):.2f} s, max {max(durations):.2f} s")
    print(f"RESULT runs={args.count} ok={passed} rss_before_mb={rss_before:.1f} rss_after_mb={rss_after:.1f} "
          f"growth_pct={growth_pct:.2f}")
    return 0 if passed == args.count and growth_pct <= args.max_growth_pct else 1


if __name__ == "__main__":
    sys.exit(main())
