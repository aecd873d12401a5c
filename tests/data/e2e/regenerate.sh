#!/usr/bin/env bash
# Regenerates the speech fixture of tests/e2e.rs (needs espeak-ng and sox; the tests themselves
# only read the committed file, so they do not depend on the synthesiser's version).
#
# speech.ulaw: one English sentence, 8 kHz mono G.711 mu-law, raw (no header): the format SIPp
# 3.6's `<exec rtp_stream="file,loops,0"/>` plays (it sends the file's bytes as they are, 160 per
# 20 ms packet; only SIPp 3.7 and later skip a WAV header). Silence is trimmed at both ends (the
# tests add the silence they need), the level is normalised to -3 dBFS peak, and the length is
# padded with mu-law silence (0xFF) to a whole number of 20 ms packets, so a looped or repeated
# stream never splices a partial packet.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# No commas: a pause longer than the VAD's 500 ms silence would split the turn.
espeak-ng -v en-us -s 160 -w "$tmp/voice.wav" "I would like to check the status of my order please"
sox "$tmp/voice.wav" -r 8000 -c 1 -b 16 "$tmp/trimmed.wav" \
    silence 1 0.02 1% reverse silence 1 0.02 1% reverse norm -3
sox "$tmp/trimmed.wav" -t ul "$tmp/speech.ulaw"
bytes=$(stat -c %s "$tmp/speech.ulaw")
pad=$(( (160 - bytes % 160) % 160 ))
cp "$tmp/speech.ulaw" speech.ulaw
head -c "$pad" /dev/zero | tr '\0' '\377' >> speech.ulaw
echo "speech.ulaw: $(stat -c %s speech.ulaw) bytes ($(( $(stat -c %s speech.ulaw) / 8 )) ms)"
