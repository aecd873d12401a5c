#!/usr/bin/env python3
"""Helper of scripts/load.sh (Python 3.11, standard library only).

  load_helper.py freeports HOST COUNT SPAN      print COUNT bases of free UDP ranges of SPAN ports
  load_helper.py audio OUT [SPEECH.ulaw]        write the caller's raw 8 kHz mu-law loop
  load_helper.py ping HOST PORT                 OPTIONS over UDP until a 200 (10 s at most)
  load_helper.py sample OUT STOPFILE PID [PIDFILE...]
                                                sample CPU ticks and RSS of PID (and the CPU of
                                                the processes in PIDFILEs once they exist) every
                                                0.5 s until STOPFILE exists or PID exits
  load_helper.py report ...                     one Markdown row from a run's files (see --help)
"""

import argparse
import json
import math
import os
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
RATE = 8000
FRAME = 160  # 20 ms at 8 kHz

# ---- ports ------------------------------------------------------------------------------------


def port_free(host, port):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def freeports(host, count, span):
    """COUNT disjoint ranges of SPAN ports, each starting even, all free now."""
    found = []
    base = 30000
    while len(found) < count and base + span < 60000:
        if all(port_free(host, p) for p in range(base, base + span)):
            found.append(base)
            base += span + 2
        else:
            base += 1000
    if len(found) < count:
        sys.exit("no free port ranges found")
    print(" ".join(str(b) for b in found))


# ---- audio ------------------------------------------------------------------------------------


def ulaw_encode(sample):
    """G.711 mu-law of one 16-bit sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_decode(byte):
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -sample if sign else sample


def frame_dbfs(samples):
    if not samples:
        return -120.0
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    return 20 * math.log10(max(rms, 1e-9) / 32768.0)


def synth_utterance(ms=1500):
    """Speech-like test signal: three harmonics of a gliding pitch, syllable-rate envelope."""
    out = []
    n = RATE * ms // 1000
    phase = 0.0
    for i in range(n):
        t = i / RATE
        f0 = 140 + 40 * math.sin(2 * math.pi * 0.7 * t)
        phase += 2 * math.pi * f0 / RATE
        env = 0.55 + 0.45 * math.sin(2 * math.pi * 4.0 * t) ** 2
        edge = min(1.0, i / 400, (n - i) / 400)
        v = math.sin(phase) + 0.6 * math.sin(2 * phase) + 0.35 * math.sin(3 * phase)
        out.append(int(7000 * env * edge * v))
    return bytes(ulaw_encode(s) for s in out)


def trim(ulaw, floor_dbfs=-45.0):
    """The utterance without leading and trailing near-silence (whole 20 ms frames)."""
    frames = [ulaw[i : i + FRAME] for i in range(0, len(ulaw) - FRAME + 1, FRAME)]
    loud = [frame_dbfs([ulaw_decode(b) for b in f]) > floor_dbfs for f in frames]
    if not any(loud):
        sys.exit("the speech file is silent")
    first = loud.index(True)
    last = len(loud) - 1 - loud[::-1].index(True)
    return b"".join(frames[first : last + 1])


def audio(out, speech):
    """The caller's loop: talk, pause 1.0 s (the reply starts after the VAD's 500 ms of silence,
    so the next utterance barges in on it), talk, pause 5 s (the reply plays out)."""
    utterance = trim(open(speech, "rb").read()) if speech else synth_utterance()
    silence = lambda ms: bytes([0xFF]) * (RATE * ms // 1000)
    loop = utterance + silence(1000) + utterance + silence(5000)
    # Whole packets only, so the loop joins on a packet boundary.
    loop = loop[: len(loop) // FRAME * FRAME]
    with open(out, "wb") as f:
        f.write(loop)
    print(
        f"caller audio: {len(utterance) * 1000 // RATE} ms utterance, "
        f"loop {len(loop) * 1000 // RATE} ms ({'speech' if speech else 'synthetic'})"
    )


# ---- readiness --------------------------------------------------------------------------------


def ping(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(0.2)
    local = "%s:%d" % s.getsockname()
    deadline = time.monotonic() + 10
    n = 0
    while time.monotonic() < deadline:
        n += 1
        msg = (
            f"OPTIONS sip:ping@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local};branch=z9hG4bK-load-{n}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:load@{host}>;tag=load{n}\r\n"
            f"To: <sip:ping@{host}>\r\n"
            f"Call-ID: load-ping-{os.getpid()}-{n}@{host}\r\n"
            f"CSeq: {n} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        try:
            reply = s.recv(4096).decode(errors="replace")
        except OSError:
            time.sleep(0.1)
            continue
        if reply.startswith("SIP/2.0 200"):
            return
        sys.exit("OPTIONS got: " + reply.splitlines()[0])
    sys.exit(f"no answer to OPTIONS on {host}:{port} within 10 s")


# ---- sampling ---------------------------------------------------------------------------------


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm: state is field 3; utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sample(out, stopfile, pid, pidfiles):
    """One line per 0.5 s: unix time, PID's utime+stime (ticks), its VmRSS (KiB), the 1-minute
    load average, then the utime+stime of each process named in PIDFILES (0 until it exists)."""
    others = [None] * len(pidfiles)
    ticks_seen = [0] * len(pidfiles)
    with open(out, "w") as f:
        while not os.path.exists(stopfile):
            try:
                ticks, rss = proc_ticks(pid), proc_rss_kb(pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            for i, pidfile in enumerate(pidfiles):
                if others[i] is None and os.path.exists(pidfile):
                    try:
                        others[i] = int(open(pidfile).read().strip())
                    except ValueError:
                        pass
                if others[i]:
                    try:
                        ticks_seen[i] = proc_ticks(others[i])
                    except (FileNotFoundError, ProcessLookupError):
                        others[i] = 0
            with open("/proc/loadavg") as la:
                load1 = la.read().split()[0]
            extra = "".join(f" {t}" for t in ticks_seen)
            f.write(f"{time.time():.3f} {ticks} {rss} {load1}{extra}\n")
            f.flush()
            time.sleep(0.5)


# ---- report -----------------------------------------------------------------------------------


def bucket_upper_us(bucket):
    """The upper bound of a LatencyHistogram bucket (src/call/lifecycle.rs)."""
    return math.ceil(2 ** ((bucket + 1) / 8) - 1)


def hist_quantile(counts, q):
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return bucket_upper_us(bucket)
    return None


def list_quantile(values, q):
    """Nearest rank."""
    if not values:
        return None
    values = sorted(values)
    return values[max(1, math.ceil(q * len(values))) - 1]


def fmt_us(us):
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us} µs"


def merge_hist(into, encoded):
    for pair in filter(None, (encoded or "").split(",")):
        bucket, count = pair.split(":")
        into[int(bucket)] = into.get(int(bucket), 0) + int(count)


def read_samples(path):
    """(time, ticks, rss_kb, load1, [other ticks...]) per line."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                other = [int(x) for x in parts[4:]]
                rows.append((float(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]), other))
    return rows


def other_pct(steady, i, dt):
    if not steady[0][4] or len(steady[0][4]) <= i:
        return None
    return 100 * (steady[-1][4][i] - steady[0][4][i]) / CLK_TCK / dt


def sipp_counts(stat_csv):
    """(successful, failed) from the last line of SIPp's -trace_stat file."""
    try:
        with open(stat_csv) as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
    except FileNotFoundError:
        return None, None
    if len(lines) < 2:
        return None, None
    header = lines[0].split(";")
    last = lines[-1].split(";")
    col = lambda name: int(last[header.index(name)]) if name in header else None
    return col("SuccessfulCall(C)"), col("FailedCall(C)")


def report(a):
    samples = read_samples(a.samples)
    idle = [s for s in samples if a.idle_from <= s[0] <= a.idle_to]
    steady = [s for s in samples if a.steady_from <= s[0] <= a.steady_to]
    notes = []
    cpu_call = rss_call = cpu_total = sipp_cpu = fake_cpu = "-"
    rss_idle_kb = rss_steady_kb = None
    if idle:
        rss_idle_kb = sum(s[2] for s in idle) / len(idle)
    if len(steady) >= 2:
        dt = steady[-1][0] - steady[0][0]
        busy = (steady[-1][1] - steady[0][1]) / CLK_TCK
        total_pct = 100 * busy / dt
        cpu_total = f"{total_pct:.1f} %"
        cpu_call = f"{total_pct / a.calls:.3f} %"
        sipp_pct = other_pct(steady, 0, dt)
        sipp_cpu = f"{sipp_pct:.0f} %" if sipp_pct is not None else "-"
        fake_pct = other_pct(steady, 1, dt)
        if fake_pct is not None:
            fake_cpu = f"{fake_pct:.1f} %"
        # Memory grows while the first turns fill the buffers, then stays flat: the peak of the
        # window is that plateau.
        rss_steady_kb = max(s[2] for s in steady)
        if rss_idle_kb is not None:
            rss_call = f"{(rss_steady_kb - rss_idle_kb) / a.calls:.0f} KiB"
        if dt < 5:
            notes.append(f"steady window only {dt:.1f} s")
    else:
        notes.append("no steady-state samples")
    loads = [s[3] for s in steady] or [s[3] for s in samples]
    load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-"

    records = []
    with open(a.log, errors="replace") as f:
        for line in f:
            if '"call record"' not in line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("message") == "call record":
                records.append(event.get("fields", event))
    hist_in, hist_out = {}, {}
    reactions = []
    barge_ins = frames_lost = dropped = packets_lost = frames_in = model_sent = 0
    answered = 0
    ends = {}
    for r in records:
        merge_hist(hist_in, r.get("latency_in_hist"))
        merge_hist(hist_out, r.get("latency_out_hist"))
        try:
            reactions += json.loads(r.get("barge_in_reaction_us") or "[]")
        except json.JSONDecodeError:
            notes.append("unparsable barge_in_reaction_us")
        barge_ins += int(r.get("barge_ins", 0))
        # Frames the upstream was not taking (a stall) never reached the bridge's audio path:
        # they count as received and lost.
        unsent = int(r.get("caller_frames_unsent", 0))
        cin = int(r.get("caller_frames_in", 0)) + unsent
        frames_in += cin
        frames_lost += cin - int(r.get("frames_to_model", 0)) - int(r.get("caller_frames_dropped", 0))
        dropped += int(r.get("caller_frames_dropped", 0))
        packets_lost += int(r.get("packets_lost", 0))
        model_sent += int(r.get("model_frames_sent", 0))
        answered += bool(r.get("answered"))
        end = r.get("end_reason", "?")
        ends[end] = ends.get(end, 0) + 1
    ok, failed = sipp_counts(a.sipp_stat)
    calls = f"{ok if ok is not None else '?'} / {failed if failed is not None else '?'}"
    ends_text = ", ".join(f"{k} {v}" for k, v in sorted(ends.items()))
    detail = {
        "format": a.format,
        "calls": a.calls,
        "records": len(records),
        "answered": answered,
        "end_reasons": ends,
        "sipp_successful": ok,
        "sipp_failed": failed,
        "cpu_total": cpu_total,
        "sipp_cpu": sipp_cpu,
        "external_fake_cpu": fake_cpu,
        "rss_idle_kib": rss_idle_kb,
        "rss_steady_kib": rss_steady_kb,
        "latency_in_samples": sum(hist_in.values()),
        "latency_out_samples": sum(hist_out.values()),
        "barge_ins": barge_ins,
        "barge_in_reactions": len(reactions),
        "caller_frames_in": frames_in,
        "caller_frames_dropped": dropped,
        "frames_lost_in_bridge": frames_lost,
        "packets_lost": packets_lost,
        "model_frames_sent": model_sent,
        "steady_window_s": (steady[-1][0] - steady[0][0]) if len(steady) >= 2 else 0,
        "notes": notes,
    }
    with open(a.detail, "w") as f:
        json.dump(detail, f, indent=1)
    row = [
        a.format,
        str(a.calls),
        calls,
        ends_text or "-",
        cpu_total,
        cpu_call,
        f"{rss_idle_kb / 1024:.1f} MiB" if rss_idle_kb else "-",
        rss_call,
        f"{fmt_us(hist_quantile(hist_in, 0.5))} / {fmt_us(hist_quantile(hist_in, 0.99))}",
        f"{fmt_us(hist_quantile(hist_out, 0.5))} / {fmt_us(hist_quantile(hist_out, 0.99))}",
        f"{barge_ins}: {fmt_us(list_quantile(reactions, 0.5))} / {fmt_us(list_quantile(reactions, 0.99))}",
        f"{frames_lost} of {frames_in}",
        str(packets_lost),
        fake_cpu,
        sipp_cpu,
        load,
    ]
    print("| " + " | ".join(row) + " |" + (f" <!-- {'; '.join(notes)} -->" if notes else ""))


HEADER = (
    "| format | calls | SIPp ok / failed | end reasons | daemon CPU (% of a core) | CPU per call "
    "| daemon RSS idle | RSS per call | RTP in -> WS out p50 / p99 | WS in -> RTP out p50 / p99 "
    "| barge-ins: reaction p50 / p99 | frames lost in bridge | RTP packets lost | fake CPU (external) | SIPp CPU | load avg |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("freeports")
    s.add_argument("host")
    s.add_argument("count", type=int)
    s.add_argument("span", type=int)
    s = sub.add_parser("audio")
    s.add_argument("out")
    s.add_argument("speech", nargs="?")
    s = sub.add_parser("sample")
    s.add_argument("out")
    s.add_argument("stopfile")
    s.add_argument("pid", type=int)
    s.add_argument("pidfiles", nargs="*")
    s = sub.add_parser("ping")
    s.add_argument("host")
    s.add_argument("port", type=int)
    sub.add_parser("header")
    s = sub.add_parser("report")
    s.add_argument("--format", required=True)
    s.add_argument("--calls", type=int, required=True)
    s.add_argument("--samples", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--sipp-stat", required=True)
    s.add_argument("--detail", required=True, help="JSON file for the run's detail")
    for name in ("idle-from", "idle-to", "steady-from", "steady-to"):
        s.add_argument(f"--{name}", type=float, required=True, help="Unix time")
    a = p.parse_args()
    if a.cmd == "freeports":
        freeports(a.host, a.count, a.span)
    elif a.cmd == "audio":
        audio(a.out, a.speech)
    elif a.cmd == "sample":
        sample(a.out, a.stopfile, a.pid, a.pidfiles)
    elif a.cmd == "ping":
        ping(a.host, a.port)
    elif a.cmd == "header":
        print(HEADER)
    else:
        report(a)


if __name__ == "__main__":
    main()
