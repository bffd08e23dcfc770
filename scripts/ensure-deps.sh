#!/usr/bin/env bash
# Installs what building and testing need from the system when it is missing: OpenSSL's
# headers and library (libssl-dev), the openssl command (certificates, interop tests) and
# pkg-config (how SwiftPM finds OpenSSL), etcd (Debian's etcd-server: the leader election
# the tests start on loopback) and promtool (the metrics linter). Debian/Ubuntu only; elsewhere it says what to get.
set -euo pipefail

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# promtool (in Debian's prometheus package) lints the metrics exposition in the tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ! { pkg-config --exists openssl 2>/dev/null || [ -f /usr/include/openssl/ssl.h ]; }; then
    missing+=(libssl-dev)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ensure-deps: installing ${missing[*]}" >&2
"$(dirname "$0")/apt-install.sh" "${missing[@]}"
