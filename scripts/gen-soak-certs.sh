#!/usr/bin/env bash
# gen-soak-certs.sh [COUNT] [DIR]
#
# Issues TEST client certificates soak-1 … soak-COUNT (default 200) from the test CA in
# certs/ (made first by gen-certs.sh if missing), for `smsg-soak soak`: each carries
# DNS:soak-N, the identity the leader binds the collaborator's node_id to. One P-256 key is
# shared by all of them (a test fixture: the soak is about sessions, not key management).
# DIR defaults to .build/soak-certs. Idempotent: certificates already there are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200}
dir=${2:-.build/soak-certs}
[[ "$count" =~ ^[0-9]+$ && "$count" -ge 1 ]] || { echo "usage: $0 [COUNT ≥ 1] [DIR]" >&2; exit 2; }
scripts/gen-certs.sh >/dev/null
mkdir -p "$dir"
# A set issued by an earlier CA, or about to expire, is replaced as a whole.
if [[ -s "$dir/soak-1.pem" ]] && ! { openssl verify -CAfile certs/ca.pem "$dir/soak-1.pem" &&
  openssl x509 -checkend 86400 -noout -in "$dir/soak-1.pem"; } >/dev/null 2>&1; then
  rm -f "$dir"/soak-*.pem "$dir"/soak-*.key "$dir/key.pem"
fi
[[ -s "$dir/key.pem" ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/key.pem" 2>/dev/null
made=0
for ((n = 1; n <= count; n++)); do
  name="soak-$n"
  [[ -s "$dir/$name.pem" && -s "$dir/$name.key" ]] && continue
  cat >"$dir/ext.cnf" <<CNF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:$name
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF
  openssl req -new -key "$dir/key.pem" -subj "/CN=$name" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA certs/ca.pem -CAkey certs/ca.key -set_serial "0x$(openssl rand -hex 15)" \
    -days 30 -sha256 -extfile "$dir/ext.cnf" -out "$dir/$name.pem.tmp" 2>/dev/null
  rm -f "$dir/$name.csr"
  cp "$dir/key.pem" "$dir/$name.key"
  mv "$dir/$name.pem.tmp" "$dir/$name.pem"
  made=$((made + 1))
done
rm -f "$dir/ext.cnf"
echo "gen-soak-certs: $count certificates in $dir ($made new)"
