#!/bin/sh
# Stands in for cmake while building (.cargo/config.toml sets CMAKE to it): audiopus_sys builds
# its bundled libopus with CMake only when pkg-config cannot find the system's, and that build
# would end in "is `cmake` not installed?", which never names the missing package.
cat >&2 <<'MSG'

error: libopus was not found. sip-realtime-bridge uses the system libopus, found by pkg-config.
On Debian or Ubuntu install them with

    sudo apt-get install -y build-essential pkg-config libopus-dev

then build again.

MSG
exit 1
