#!/usr/bin/env bash
# Installs what the tests need on Debian 12 / Ubuntu 24.04 (as root): the build's libopus and
# pkg-config, and the real peers and tools the interop tests run. .ci/run runs it first.
#   systemd: systemd-analyze, for the unit's verify and security tests.
#   sip-tester (sipp) and baresip: real SIP peers for the interop tests.
#   iproute2: `ip netns`, for the torture-message test's loopback-only namespace.
#   tcpdump: the end-to-end tests capture the daemon's RTP on lo.
#   kamailio: the registrar and proxy of tests/kamailio.rs, which runs its own on loopback.
set -euo pipefail
packages=(build-essential pkg-config libopus-dev systemd sip-tester baresip iproute2 tcpdump kamailio)
if [ "$(id -u)" -ne 0 ]; then
    echo "not root: install these as root (sudo $0), or yourself: ${packages[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Installing kamailio must not start the packaged service (it would take 0.0.0.0:5060): a
# policy-rc.d that denies every start is in place for the install, unless one already is.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi
trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "installed: ${packages[*]}"
