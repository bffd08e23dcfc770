#!/usr/bin/env bash
# Scans `securemsg bench server` (TLS, the test certificates) with real TLS scanners and fails
# on anything short of Mozilla's "intermediate" profile, except the certificate items (the
# test certificates are self-issued, with a long life), on TLS compression, insecure
# renegotiation, a protocol older than TLS 1.2, or any vulnerability finding.
#   sslyze (from PyPI, into .build/sslyze-venv when it is not installed) --mozilla_config=intermediate
#   sslscan (Debian) for protocols, compression and renegotiation
# Usage: scripts/tls-scan.sh   (Env: PORT=19690)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
PORT=${PORT:-19690}
if ! command -v sslscan >/dev/null; then
    scripts/apt-install.sh sslscan >&2
fi
SSLYZE=$(command -v sslyze || true)
if [ -z "$SSLYZE" ]; then
    if [ ! -x .build/sslyze-venv/bin/sslyze ]; then
        python3 -m venv .build/sslyze-venv
        .build/sslyze-venv/bin/pip install -q sslyze >&2
    fi
    SSLYZE=.build/sslyze-venv/bin/sslyze
fi
swift build --product securemsg >&2
bin="$(swift build --show-bin-path)/securemsg"
work=$(mktemp -d)
"$bin" bench server --listen "127.0.0.1:$PORT" --cert certs/server.pem --key certs/server.key >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done

failed=0
echo "== sslyze --mozilla_config=intermediate"
set +e
"$SSLYZE" --mozilla_config=intermediate --json_out="$work/sslyze.json" "localhost:$PORT{127.0.0.1}" >"$work/sslyze.txt" 2>&1
set -e
sed -n '/COMPLIANCE AGAINST/,$p' "$work/sslyze.txt"
python3 - "$work/sslyze.txt" "$work/sslyze.json" <<'PY' || failed=1
import json, re, sys
text = open(sys.argv[1]).read()
# The test certificates are self-issued and long-lived: only these items may differ.
allowed = {"certificate_path_validation", "maximum_certificate_lifespan"}
items = re.findall(r"^\s+\* (\w+):", text.split("COMPLIANCE AGAINST")[-1], re.M)
problems = [i for i in items if i not in allowed]
if "COMPLIANCE AGAINST" not in text:
    problems.append("sslyze did not report on compliance")
scan = json.load(open(sys.argv[2]))["server_scan_results"][0]["scan_result"]
def result(name):
    return (scan.get(name) or {}).get("result") or {}
if result("tls_compression").get("supports_compression"): problems.append("TLS compression")
if result("heartbleed").get("is_vulnerable_to_heartbleed"): problems.append("Heartbleed")
if result("openssl_ccs_injection").get("is_vulnerable_to_ccs_injection"): problems.append("CCS injection")
if "VULNERABLE" in str(result("robot").get("robot_result", "")) and "NOT_VULNERABLE" not in str(result("robot").get("robot_result", "")):
    problems.append("ROBOT")
renegotiation = result("session_renegotiation")
if renegotiation.get("is_vulnerable_to_client_renegotiation_dos"): problems.append("client renegotiation DoS")
for old in ["ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"]:
    if result(old).get("accepted_cipher_suites"): problems.append(f"{old} accepted")
if problems:
    print("sslyze: FAILED: " + ", ".join(problems)); sys.exit(1)
print(f"sslyze: OK (certificate items only: {', '.join(items) or 'none'})")
PY

echo "== sslscan"
sslscan --no-colour "127.0.0.1:$PORT" >"$work/sslscan.txt" 2>&1 || true
python3 - "$work/sslscan.txt" <<'PY' || failed=1
import re, sys
text = open(sys.argv[1]).read()
problems = []
for proto in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"]:
    if re.search(rf"^{re.escape(proto)}\s+enabled", text, re.M): problems.append(f"{proto} enabled")
if "Compression enabled" in text: problems.append("compression enabled")
if "Insecure session renegotiation supported" in text: problems.append("insecure renegotiation")
if re.search(r"vulnerable to heartbleed", text) and not re.search(r"not vulnerable to heartbleed", text): problems.append("heartbleed")
if re.search(r"^(Preferred|Accepted).*(RC4|DES|NULL|EXP|MD5|CBC)", text, re.M): problems.append("a weak cipher suite")
if "TLSv1.3   enabled" not in text: problems.append("TLS 1.3 not offered")
if problems:
    print("sslscan: FAILED: " + ", ".join(problems)); sys.exit(1)
print("sslscan: OK (TLS 1.2 and 1.3 only, AEAD suites only, no compression, no renegotiation)")
PY
exit $failed
