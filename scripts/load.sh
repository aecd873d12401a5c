#!/usr/bin/env bash
# Load test of the whole call path on loopback: SIPp (package sip-tester, 3.6.1) places N
# concurrent calls at the daemon, each talking (rtp_stream) to the in-process fake realtime
# server, which detects the caller's turns and echoes them back; the caller talks over the
# replies, so barge-ins happen. The daemon's CPU and RSS are sampled from /proc while all N
# calls are up; latencies, barge-in reactions and frame counts come from the call records
# (JSON log). One Markdown row per (audio format, N) is printed at the end.
#
# Everything runs on 127.0.0.1, nothing else is ever addressed.
#
# Usage: scripts/load.sh
# Environment (all optional):
#   LOAD_BIN       the daemon binary; default: cargo build --release --locked, then its binary
#   LOAD_FORMATS   profile audio_format values to run (default "g711_ulaw pcm16")
#   LOAD_CALLS     concurrent call counts (default "1 50 200")
#   LOAD_HOLD_S    how long each call lasts once answered, seconds (default 30)
#   LOAD_RATE      new calls per second while ramping up (default 50)
#   LOAD_AUDIO     "speech" (espeak-ng + sox; the default when both are installed) or
#                  "synthetic" (a speech-like signal made in Python)
#   LOAD_FAKE      "inprocess" (default): upstream kind = "fake", the fake realtime server runs
#                  inside the daemon, so its CPU and memory are counted with the bridge's;
#                  "external": the same fake as its own process (`fake-realtime`), reached as an
#                  OpenAI upstream at ws://127.0.0.1, so the daemon's figures are the bridge's
#                  alone (the fake's CPU is reported in its own column)
#   LOAD_KEEP      1: keep the working directory (logs, samples, SIPp files) and say where
#
# Requirements: sipp, python3 (3.11+, standard library), cargo unless LOAD_BIN is set.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
helper=(python3 "$here/load_helper.py")
scenario="$repo/tests/sipp/load_call.xml"
host=127.0.0.1

formats=${LOAD_FORMATS:-"g711_ulaw pcm16"}
counts=${LOAD_CALLS:-"1 50 200"}
hold_s=${LOAD_HOLD_S:-30}
rate=${LOAD_RATE:-50}
keep=${LOAD_KEEP:-0}
fake_mode=${LOAD_FAKE:-inprocess}
[[ $fake_mode == inprocess || $fake_mode == external ]] || { echo "load.sh: LOAD_FAKE is inprocess or external" >&2; exit 2; }

command -v sipp >/dev/null || { echo "load.sh: sipp is missing (apt-get install sip-tester)" >&2; exit 2; }

if [[ -n ${LOAD_BIN:-} ]]; then
    bin=$LOAD_BIN
else
    echo "load.sh: building the release binary" >&2
    (cd "$repo" && cargo build --release --locked --quiet)
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/sip-realtime-bridge"
fi
[[ -x $bin ]] || { echo "load.sh: no binary at $bin" >&2; exit 2; }

work=$(mktemp -d -t srb-load.XXXXXX)
bridge_pid=
sipp_pid=
sampler_pid=
fake_pid=
cleanup() {
    # Only the processes this script started, by their ids.
    for pid in $sipp_pid $sampler_pid $bridge_pid $fake_pid; do
        kill "$pid" 2>/dev/null || true
    done
    if [[ $keep == 1 ]]; then
        echo "load.sh: files kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# 200 calls: SIPp holds 2 sockets per call, the daemon 2 UDP sockets and 2 WebSocket ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- the caller's audio: raw 8 kHz mu-law, what SIPp 3.6.1's rtp_stream sends as it is ------
audio_kind=${LOAD_AUDIO:-}
if [[ -z $audio_kind ]]; then
    if command -v espeak-ng >/dev/null && command -v sox >/dev/null; then audio_kind=speech; else audio_kind=synthetic; fi
fi
if [[ $audio_kind == speech ]]; then
    espeak-ng -v en-us -s 160 -w "$work/speech.wav" \
        "Hello, I would like to know where my order is" 2>/dev/null
    sox "$work/speech.wav" -r 8000 -c 1 -e mu-law -t raw "$work/speech.ulaw"
    "${helper[@]}" audio "$work/caller.ulaw" "$work/speech.ulaw" >&2
else
    "${helper[@]}" audio "$work/caller.ulaw" >&2
fi

machine="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "load.sh: $machine; sipp: $(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1); hold ${hold_s} s, ramp ${rate} calls/s, audio $audio_kind, fake $fake_mode" >&2

rows=()

run_one() {
    local format=$1 calls=$2
    local dir="$work/$format-$calls"
    mkdir -p "$dir"
    ln -s "$work/caller.ulaw" "$dir/caller.ulaw"

    local ports rtp_base media_base sip_port sipp_port fake_port
    ports=$("${helper[@]}" freeports "$host" 3 1000)
    read -r rtp_base media_base sip_port <<<"$ports"
    sipp_port=$((sip_port + 2))
    fake_port=$((sip_port + 4))
    local upstream=fake
    [[ $fake_mode == external ]] && upstream=fake-external

    cat >"$dir/bridge.toml" <<EOF
[log]
level = "info"
format = "json"

[sip]
listen = ["udp:$host:$sip_port"]
codecs = ["pcmu"]

[rtp]
port_range = "$rtp_base-$((rtp_base + 999))"

[limits]
max_calls = 300
answer_timeout = "10s"

[upstreams.fake]
kind = "fake"
# The caller's last turn played back, streamed 4x faster than real time in 40-240 ms deltas.
reply = { kind = "echo" }
speed = 4.0
late_deltas_ms = 60

# The same fake as its own process (LOAD_FAKE=external); the key is a dummy the fake ignores.
[upstreams.fake-external]
kind = "openai"
model = "fake"
url = "ws://$host:$fake_port/v1/realtime"
api_key_env = "LOAD_FAKE_KEY"

[profiles.load]
upstream = "$upstream"
audio_format = "$format"
turn_detection = { type = "server_vad", threshold = 0.5, prefix_padding_ms = 300, silence_duration_ms = 500, create_response = true, interrupt_response = true }

[[routes]]
profile = "load"
EOF
    # A clean environment: SRB_* variables would override the configuration, RUST_LOG its level.
    env -i PATH="$PATH" LOAD_FAKE_KEY=dummy "$bin" check-config --config "$dir/bridge.toml" >&2

    if [[ $fake_mode == external ]]; then
        env -i PATH="$PATH" "$bin" fake-realtime --config "$dir/bridge.toml" --upstream fake \
            --listen "$host:$fake_port" 2>"$dir/fake.log" </dev/null &
        fake_pid=$!
        echo "$fake_pid" >"$dir/fake.pid"
        local i
        for i in $(seq 50); do
            (exec 3<>"/dev/tcp/$host/$fake_port") 2>/dev/null && break
            sleep 0.1
        done
    fi
    env -i PATH="$PATH" LOAD_FAKE_KEY=dummy "$bin" run --config "$dir/bridge.toml" 2>"$dir/bridge.log" </dev/null &
    bridge_pid=$!
    "${helper[@]}" ping "$host" "$sip_port"
    local watched=("$dir/sipp.pid")
    [[ $fake_mode == external ]] && watched+=("$dir/fake.pid")
    "${helper[@]}" sample "$dir/samples.txt" "$dir/stop" "$bridge_pid" "${watched[@]}" &
    sampler_pid=$!

    # Idle: daemon up, fake upstream listening, no call.
    local idle_from idle_to
    idle_from=$(date +%s.%N)
    sleep 3
    idle_to=$(date +%s.%N)

    local t0 sipp_rc=0
    t0=$(date +%s.%N)
    (
        cd "$dir"
        exec sipp -sf "$scenario" -i "$host" -p "$sipp_port" -mi "$host" -mp "$media_base" \
            -d $((hold_s * 1000)) -m "$calls" -l "$calls" -r "$rate" -rp 1000 \
            -timeout $((hold_s + calls / rate + 60))s -nostdin \
            -trace_stat -stf sipp_stat.csv -fd 1 -trace_err -error_file sipp_errors.log \
            "$host:$sip_port" >sipp_screen.txt 2>&1
    ) &
    sipp_pid=$!
    echo "$sipp_pid" >"$dir/sipp.pid"
    wait "$sipp_pid" || sipp_rc=$?
    sipp_pid=
    sleep 1
    touch "$dir/stop"
    wait "$sampler_pid" || true
    sampler_pid=
    kill -TERM "$bridge_pid" 2>/dev/null || true
    wait "$bridge_pid" || true
    bridge_pid=
    if [[ -n $fake_pid ]]; then
        kill -TERM "$fake_pid" 2>/dev/null || true
        wait "$fake_pid" || true
        fake_pid=
    fi

    # Steady state: from the last call's answer (ramp + 2 s for setup) to 1 s before the first
    # call's hold ends.
    local steady_from steady_to
    steady_from=$(python3 -c "print($t0 + ($calls - 1) / $rate + 2)")
    steady_to=$(python3 -c "print($t0 + $hold_s - 1)")
    local row report_args
    report_args=(report --format "$format" --calls "$calls" --samples "$dir/samples.txt"
        --log "$dir/bridge.log" --sipp-stat "$dir/sipp_stat.csv" --detail "$dir/detail.json"
        --idle-from "$idle_from" --idle-to "$idle_to" --steady-from "$steady_from" --steady-to "$steady_to")
    # Kept with the run's files, so the row can be computed again from them (LOAD_KEEP=1).
    printf '%q ' "${helper[@]}" "${report_args[@]}" >"$dir/report.sh"
    row=$("${helper[@]}" "${report_args[@]}")
    echo "load.sh: $format x $calls: sipp exit $sipp_rc" >&2
    echo "$row" >&2
    [[ $sipp_rc == 0 ]] || { echo "load.sh: SIPp errors (first lines):" >&2; head -5 "$dir/sipp_errors.log" >&2 2>/dev/null || true; }
    rows+=("$row")
}

for format in $formats; do
    for calls in $counts; do
        run_one "$format" "$calls"
    done
done

echo
echo "Load: $machine; $(date -u +%Y-%m-%d); fake $fake_mode; hold ${hold_s} s, ramp ${rate} calls/s, caller audio $audio_kind"
echo
"${helper[@]}" header
printf '%s\n' "${rows[@]}"
