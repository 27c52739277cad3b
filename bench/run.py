"""Accepted deliveries per second: spool mode versus direct mode, in one run.

    python bench/run.py [--duration 10] [--concurrency 32] [--loadgen-src DIR]

What it does, in order (see bench/README.md for why):

1. builds the shared Go load generator (``go build``; installs ``golang-go`` with apt
   when Go is missing and we are root);
2. makes dev certificates (``sidecar.tls.devcerts.write_dev_certs``: one CA, a server
   cert for 127.0.0.1, a client cert with Meta's CN);
3. for each scenario (``spool``, then ``direct``): starts a fresh fast upstream
   (``bench/upstream.py``) and a fresh ``python -m sidecar serve`` on free ports with
   an empty spool file, drives it with keep-alive HTTPS + client certificate, every body
   unique (``-uniq``: the token is the wamid, so every request is a new event) and
   correctly signed (``-sign-secret``), waits (bounded) until the upstream has received
   every event the sidecar accepted, and stops both processes by PID;
4. prints one table, and the spool/direct ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
APP_SECRET = "benchsecret"
SIGNING_SECRET = "bench-signing-secret"
TOKEN = "X" * 24  # replaced by the loadgen with a unique 24-hex-digit id per request
META_CN = "client.webhooks.fbclientcerts.com"
TARGET_BODY_BYTES = 1449  # the baseline's payload size (reference/performance-baseline.md)


# ---------------------------------------------------------------------- building blocks

def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_loadgen(src: Path, out: Path) -> Path:
    if not (src / "main.go").is_file():
        sys.exit(f"bench: no load generator source at {src} (give --loadgen-src)")
    if shutil.which("go") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("go not found: apt-get install -y golang-go")
            subprocess.run(["apt-get", "install", "-y", "golang-go"], check=True,
                           stdout=subprocess.DEVNULL)
        else:
            sys.exit("bench: Go is needed to build the load generator (apt-get install golang-go)")
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(Path(tempfile.gettempdir()) / "go-build-cache"))
    env.setdefault("GOFLAGS", "-mod=mod")
    log(f"go build -o {out} {src}")
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=src, env=env, check=True)
    return out


def payload() -> bytes:
    """A ~1.5 KB inbound text ``messages`` delivery; the wamid is the uniq token."""
    def build(text: str) -> bytes:
        doc = {"object": "whatsapp_business_account", "entry": [{
            "id": "102290129340398",
            "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881",
                             "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                "messages": [{"from": "16505551234", "id": f"wamid.{TOKEN}",
                              "timestamp": "1749416383", "type": "text",
                              "text": {"body": text}}],
            }}],
        }]}
        return json.dumps(doc, indent=1).encode()

    sentence = "Does it come in another color? I would also like to know the delivery time. "
    base = len(build(""))
    text = (sentence * 40)[:max(0, TARGET_BODY_BYTES - base)]
    body = build(text)
    assert body.count(TOKEN.encode()) == 1
    return body


def write_config(work: Path, scenario: str, port: int, admin_port: int, upstream_port: int,
                 certs: Any) -> Path:
    config = work / f"sidecar-{scenario}.yaml"
    spool = work / f"spool-{scenario}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{spool}{suffix}").unlink(missing_ok=True)
    config.write_text(f"""\
listen: {{host: 127.0.0.1, port: {port}, path: /webhooks/whatsapp}}
tls:
  cert_file: {certs.server_cert}
  key_file: {certs.server_key}
  client_ca_files: [{certs.ca_cert}]
  allowed_client_names: [{META_CN}]
meta:
  app_secrets: ["{APP_SECRET}"]
  verify_token: "bench-verify-token"
upstream:
  url: http://127.0.0.1:{upstream_port}/events
  timeout_s: 5
  signing_secret: "{SIGNING_SECRET}"
delivery:
  mode: {scenario}
  spool_path: {spool}
admin: {{host: 127.0.0.1, port: {admin_port}}}
logging: {{level: warning, format: json}}
""", encoding="utf-8")
    return config


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def wait_for(check: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"bench: {what}: not ready after {timeout_s}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upstream_stats(port: int) -> dict[str, int]:
    status, body = http_get(f"http://127.0.0.1:{port}/stats")
    assert status == 200
    return json.loads(body)


# ---------------------------------------------------------------------- one scenario

@dataclass
class Row:
    scenario: str
    rps: float
    p50: float
    p99: float
    errors: int
    first_error: str
    accepted: int
    delivered: int
    delivered_during_load: int
    wall_s: float  # warm-up + measured window: the time the load ran
    drain_s: float | None
    cpu_sidecar: float
    cpu_upstream: float
    cpu_loadgen: float


def run_scenario(scenario: str, *, loadgen: Path, certs: Any, body_file: Path, work: Path,
                 duration: int, concurrency: int, loop: str, drain_timeout_s: float) -> Row:
    port, admin_port, upstream_port = free_port(), free_port(), free_port()
    config = write_config(work, scenario, port, admin_port, upstream_port, certs)
    logs = open(work / f"{scenario}.log", "wb")
    upstream = subprocess.Popen([sys.executable, str(REPO / "bench" / "upstream.py"),
                                 "--port", str(upstream_port)], stdout=logs, stderr=logs)
    sidecar: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{upstream_port}/stats")[0] == 200, 10,
                 "upstream", upstream)
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "-c", str(config), "--loop", loop],
            stdout=logs, stderr=logs, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_for(lambda: http_get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200, 30,
                 f"sidecar ({scenario})", sidecar)

        log(f"{scenario}: c={concurrency}, {duration}s (+1s warm-up), keep-alive")
        cpu0 = cpu_seconds(sidecar.pid), cpu_seconds(upstream.pid)
        gen = subprocess.Popen(
            [str(loadgen), "-url", f"https://127.0.0.1:{port}/webhooks/whatsapp",
             "-c", str(concurrency), "-d", f"{duration}s", "-body", str(body_file),
             "-H", "Content-Type: application/json", "-uniq", TOKEN,
             "-sign-secret", APP_SECRET, "-cert", str(certs.client_cert),
             "-key", str(certs.client_key), "-cacert", str(certs.ca_cert),
             "-label", scenario],
            stdout=subprocess.PIPE, stderr=logs)
        out = gen.stdout.read() if gen.stdout else b""
        _, status, usage = os.wait4(gen.pid, 0)
        gen.returncode = os.waitstatus_to_exitcode(status)
        if gen.returncode != 0:
            sys.exit(f"bench: loadgen failed ({gen.returncode}); see {work}/{scenario}.log")
        result = json.loads(out.decode().strip().splitlines()[-1])
        load_end = time.monotonic()
        cpu1 = cpu_seconds(sidecar.pid), cpu_seconds(upstream.pid)
        wall = duration + 1.0  # the loadgen's warm-up runs at full load too

        accepted = int(result["ok_total"])
        delivered = during = upstream_stats(upstream_port)["events"]
        deadline = load_end + drain_timeout_s
        while delivered < accepted and time.monotonic() < deadline:
            time.sleep(0.1)
            delivered = upstream_stats(upstream_port)["events"]
        drain_s = time.monotonic() - load_end if delivered >= accepted else None
        return Row(scenario=scenario, rps=result["rps"], p50=result["p50_ms"],
                   p99=result["p99_ms"], errors=int(result["errors"]),
                   first_error=result.get("first_error", ""), accepted=accepted,
                   delivered=delivered, delivered_during_load=during, wall_s=wall,
                   drain_s=drain_s,
                   cpu_sidecar=(cpu1[0] - cpu0[0]) / wall,
                   cpu_upstream=(cpu1[1] - cpu0[1]) / wall,
                   cpu_loadgen=(usage.ru_utime + usage.ru_stime) / wall)
    finally:
        if sidecar is not None:
            stop(sidecar)
        stop(upstream)
        logs.close()


# ---------------------------------------------------------------------- output

def table(rows: list[Row]) -> str:
    head = ["scenario", "accepted req/s", "p50 ms", "p99 ms", "errors",
            "delivered / accepted", "delivered by load end", "drain s", "end-to-end ev/s",
            "CPU sidecar", "CPU upstream", "CPU loadgen"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        drain = "not drained" if r.drain_s is None else f"{r.drain_s:.1f}"
        e2e = "-" if r.drain_s is None else f"{r.accepted / (r.wall_s + r.drain_s):,.0f}"
        lines.append("| " + " | ".join([
            r.scenario, f"{r.rps:,.0f}", f"{r.p50:.1f}", f"{r.p99:.1f}", str(r.errors),
            f"{r.delivered:,} / {r.accepted:,}", f"{r.delivered_during_load:,}", drain, e2e,
            f"{r.cpu_sidecar:.2f}",
            f"{r.cpu_upstream:.2f}", f"{r.cpu_loadgen:.2f}"]) + " |")
    by = {r.scenario: r for r in rows}
    if "spool" in by and "direct" in by and by["direct"].rps:
        lines.append("")
        lines.append(f"spool / direct (accepted req/s): {by['spool'].rps / by['direct'].rps:.2f}x")
    for r in rows:
        if r.errors:
            lines.append(f"{r.scenario}: first error: {r.first_error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="measured seconds per scenario (the loadgen caps it at 15)")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--loadgen-src", type=Path,
                        default=REPO.parent / "shared" / "tools" / "mtls-loadgen",
                        help="the mtls-loadgen Go source folder")
    parser.add_argument("--loadgen-bin", type=Path, default=Path("/tmp/mtls-loadgen"))
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="the sidecar's event loop")
    parser.add_argument("--scenarios", default="spool,direct",
                        help="comma-separated, from: spool, direct")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="max seconds to wait for the upstream to get every accepted event")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep certs, configs, spools and logs here (default: a temp dir)")
    args = parser.parse_args(argv)

    from sidecar.tls.devcerts import write_dev_certs

    loadgen = build_loadgen(args.loadgen_src.resolve(), args.loadgen_bin)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sidecar-bench-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        certs = write_dev_certs(work / "certs", server_names=("localhost",),
                                server_ips=("127.0.0.1",))
        body_file = work / "payload.json"
        body_file.write_bytes(payload())
        log(f"payload {len(body_file.read_bytes())} bytes; workdir {work}")
        rows = [run_scenario(s.strip(), loadgen=loadgen, certs=certs, body_file=body_file,
                             work=work, duration=args.duration, concurrency=args.concurrency,
                             loop=args.loop, drain_timeout_s=args.drain_timeout)
                for s in args.scenarios.split(",") if s.strip()]
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(table(rows))
    return 0 if all(r.delivered >= r.accepted for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
