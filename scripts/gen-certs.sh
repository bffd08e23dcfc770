#!/usr/bin/env bash
# gen-certs.sh [DIR]
#
# Generates the TEST certificate fixtures used by the smsg test suite.
# These are test certificates only; never use them in production.
#
# DIR defaults to certs/ in the repository root (the parent directory of this
# script's directory). An explicit DIR is used as given.
#
# Idempotent: if DIR/.complete exists and every expected file is present (and
# server.pem is not about to expire) the script exits 0 without doing anything.
# Otherwise everything is regenerated into a temporary directory inside DIR,
# self-checked, and only then moved into place, so an interrupted run never
# leaves a mixed set behind. Delete DIR (or DIR/.complete) to force a rebuild.
#
# Only the openssl command line tool (OpenSSL 3.x) is used.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
DIR="${1:-$REPO_ROOT/certs}"

PASSPHRASE="test-passphrase"

# Every regular file the script produces (ca-dir/ is checked separately).
FILES=(
  ca.pem ca.key
  server.pem server.key
  server-rsa.pem server-rsa.key
  leader.pem leader.key
  collab-1.pem collab-1.key
  collab-2.pem collab-2.key
  collab-3.pem collab-3.key
  other-ca.pem other-ca.key
  other.pem other.key
  expired.pem expired.key
  wronghost.pem wronghost.key
  revoked.pem revoked.key
  encrypted.key encrypted.pass
  ca.crl.pem ca-empty.crl.pem
)
KEY_FILES=(
  ca.key server.key server-rsa.key leader.key collab-1.key collab-2.key collab-3.key
  other-ca.key other.key expired.key wronghost.key revoked.key encrypted.key
)

die() {
  echo "gen-certs: $*" >&2
  exit 1
}

# True when DIR already holds a complete, usable set.
is_complete() {
  local f
  [[ -f "$DIR/.complete" ]] || return 1
  for f in "${FILES[@]}"; do
    [[ -s "$DIR/$f" ]] || return 1
  done
  [[ -d "$DIR/ca-dir" ]] || return 1
  compgen -G "$DIR/ca-dir/*.0" >/dev/null || return 1
  # Cheap guard against a set that has (nearly) run out of validity.
  if command -v openssl >/dev/null 2>&1; then
    openssl x509 -in "$DIR/server.pem" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  fi
  return 0
}

if is_complete; then
  exit 0
fi

# --- make sure openssl is available ----------------------------------------
if ! command -v openssl >/dev/null 2>&1; then
  echo "gen-certs: the 'openssl' command line tool is required but was not found in PATH." >&2
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "gen-certs: running as root with apt-get available; trying 'apt-get install -y openssl'..." >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y openssl >/dev/null 2>&1; then
      apt-get update >/dev/null 2>&1 || true
      apt-get install -y openssl >/dev/null 2>&1 || true
    fi
  fi
  command -v openssl >/dev/null 2>&1 ||
    die "please install OpenSSL 3.x (e.g. 'apt-get install openssl' or 'brew install openssl@3') and re-run."
fi

mkdir -p "$DIR"
DIR_SHOWN="$DIR"
DIR="$(cd "$DIR" && pwd)" # absolute from here on (we cd into the temp dir)

# Serialise concurrent runs (e.g. parallel test processes) where flock exists,
# then re-check: another run may have finished while we waited.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/.lock"
  flock 9
  if is_complete; then
    exit 0
  fi
fi

TMP="$(mktemp -d "$DIR/.gen-certs.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
mkdir out cadb cadb/newcerts
LOG="$TMP/last.log"

# Run a command quietly; on failure show its output and abort.
run() {
  if ! "$@" >"$LOG" 2>&1; then
    echo "gen-certs: command failed: $*" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

# Random positive 63-bit serial number in hex.
rand_serial() {
  local hex first
  hex="$(openssl rand -hex 8)"
  first=$((16#${hex:0:1} & 7))
  [[ $first -eq 0 ]] && first=1 # keep it a full-length, non-zero serial
  printf '%x%s' "$first" "${hex:1}"
}

# --- OpenSSL configuration ----------------------------------------------------
# Extension sections: req_<name> goes into the CSR, x509_<name> is used when
# signing with `openssl x509 -req` (adds the key identifiers).
leaf_sections() { # name san eku ku
  cat <<EOF
[ req_$1 ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, $4
extendedKeyUsage = $3
subjectAltName = $2

[ x509_$1 ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, $4
extendedKeyUsage = $3
subjectAltName = $2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

EOF
}

LOCAL_SAN="DNS:localhost, IP:127.0.0.1, IP:::1"
EC_KU="digitalSignature"
RSA_KU="digitalSignature, keyEncipherment"

{
  cat <<'EOF'
# Temporary configuration written by scripts/gen-certs.sh
[ req ]
distinguished_name = req_dn
string_mask = utf8only
[ req_dn ]

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ ca ]
default_ca = test_ca

[ test_ca ]
dir = cadb
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = out/ca.pem
private_key = out/ca.key
default_md = sha256
default_days = 825
default_crl_days = 3650
policy = policy_any
unique_subject = no
copy_extensions = copy
email_in_dn = no
x509_extensions = ca_signed_leaf
crl_extensions = crl_ext

[ policy_any ]
commonName = supplied

[ ca_signed_leaf ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ crl_ext ]
authorityKeyIdentifier = keyid:always

EOF
  leaf_sections server "$LOCAL_SAN" "serverAuth" "$EC_KU"
  leaf_sections server_rsa "$LOCAL_SAN" "serverAuth" "$RSA_KU"
  leaf_sections leader "DNS:leader, $LOCAL_SAN" "serverAuth, clientAuth" "$EC_KU"
  leaf_sections collab1 "DNS:collab-1" "clientAuth" "$EC_KU"
  leaf_sections collab2 "DNS:collab-2" "clientAuth" "$EC_KU"
  leaf_sections collab3 "DNS:collab-3" "clientAuth" "$EC_KU"
  leaf_sections other "$LOCAL_SAN, DNS:collab-1" "serverAuth, clientAuth" "$EC_KU"
  leaf_sections expired "$LOCAL_SAN" "serverAuth, clientAuth" "$EC_KU"
  leaf_sections wronghost "DNS:wrong.example" "serverAuth" "$EC_KU"
  leaf_sections revoked "DNS:collab-revoked" "clientAuth" "$EC_KU"
} >openssl.cnf
CNF="$TMP/openssl.cnf"

# --- helpers --------------------------------------------------------------------
gen_ec_key() { run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "out/$1"; }
gen_rsa_key() { run openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "out/$1"; }

make_ca() { # base cn
  gen_ec_key "$1.key"
  run openssl req -new -x509 -config "$CNF" -key "out/$1.key" -subj "/CN=$2" \
    -sha256 -days 3650 -set_serial "0x$(rand_serial)" -extensions v3_ca -out "out/$1.pem"
}

make_csr() { # base cn section
  run openssl req -new -config "$CNF" -key "out/$1.key" -subj "/CN=$2" \
    -sha256 -reqexts "req_$3" -out "$1.csr"
}

sign_leaf() { # base cn section issuer
  make_csr "$1" "$2" "$3"
  run openssl x509 -req -in "$1.csr" -CA "out/$4.pem" -CAkey "out/$4.key" \
    -set_serial "0x$(rand_serial)" -days 825 -sha256 \
    -extfile "$CNF" -extensions "x509_$3" -out "out/$1.pem"
}

ca_sign() { # base cn section [extra openssl ca args...]
  local base="$1" cn="$2" section="$3"
  shift 3
  make_csr "$base" "$cn" "$section"
  rand_serial >cadb/serial
  echo >>cadb/serial
  run openssl ca -batch -notext -config "$CNF" -in "$base.csr" -out "out/$base.pem" "$@"
}

# --- CAs -----------------------------------------------------------------------
make_ca ca "smsg Test CA"
make_ca other-ca "smsg Unrelated CA"

# --- leaf certificates signed with `openssl x509 -req` ---------------------------
gen_ec_key server.key
sign_leaf server localhost server ca

gen_rsa_key server-rsa.key
sign_leaf server-rsa localhost server_rsa ca

gen_ec_key leader.key
sign_leaf leader leader leader ca

gen_ec_key collab-1.key
sign_leaf collab-1 collab-1 collab1 ca

gen_ec_key collab-2.key
sign_leaf collab-2 collab-2 collab2 ca

gen_ec_key collab-3.key
sign_leaf collab-3 collab-3 collab3 ca

gen_ec_key other.key
sign_leaf other localhost other other-ca

gen_ec_key wronghost.key
sign_leaf wronghost wrong.example wronghost ca

# --- certificates needing the `openssl ca` database ------------------------------
: >cadb/index.txt
echo "unique_subject = no" >cadb/index.txt.attr
echo 1000 >cadb/crlnumber

gen_ec_key expired.key
ca_sign expired localhost expired -startdate 20200101000000Z -enddate 20200102000000Z

gen_ec_key revoked.key
ca_sign revoked collab-revoked revoked -days 825

run openssl ca -batch -config "$CNF" -gencrl -out out/ca-empty.crl.pem
run openssl ca -batch -config "$CNF" -revoke out/revoked.pem -crl_reason keyCompromise
run openssl ca -batch -config "$CNF" -gencrl -out out/ca.crl.pem

# --- encrypted copy of server.key ------------------------------------------------
printf '%s' "$PASSPHRASE" >out/encrypted.pass
run openssl pkcs8 -topk8 -in out/server.key -v2 aes-256-cbc \
  -passout "pass:$PASSPHRASE" -out out/encrypted.key

# --- hashed CA directory -----------------------------------------------------------
mkdir out/ca-dir
HASH="$(openssl x509 -in out/ca.pem -noout -hash)"
cp out/ca.pem "out/ca-dir/$HASH.0"

# --- permissions -------------------------------------------------------------------
chmod 755 out/ca-dir
chmod 644 out/*.pem out/ca-dir/*
chmod 600 out/encrypted.pass
for k in "${KEY_FILES[@]}"; do chmod 600 "out/$k"; done

# --- self-check ----------------------------------------------------------------------
check_fail() {
  echo "gen-certs: self-check failed: $*" >&2
  [[ -s "$LOG" ]] && cat "$LOG" >&2
  exit 1
}

for c in server server-rsa leader collab-1 collab-2 collab-3 wronghost revoked; do
  openssl verify -CAfile out/ca.pem "out/$c.pem" >"$LOG" 2>&1 ||
    check_fail "$c.pem does not verify against ca.pem"
done
openssl verify -CAfile out/other-ca.pem out/other.pem >"$LOG" 2>&1 ||
  check_fail "other.pem does not verify against other-ca.pem"
if openssl verify -CAfile out/ca.pem out/other.pem >"$LOG" 2>&1; then
  check_fail "other.pem unexpectedly verifies against ca.pem"
fi
if openssl verify -CAfile out/ca.pem out/expired.pem >"$LOG" 2>&1; then
  check_fail "expired.pem unexpectedly verifies"
fi
grep -q "certificate has expired" "$LOG" || check_fail "expired.pem fails for the wrong reason"
if openssl verify -crl_check -CAfile out/ca.pem -CRLfile out/ca.crl.pem out/revoked.pem >"$LOG" 2>&1; then
  check_fail "revoked.pem unexpectedly verifies with ca.crl.pem"
fi
grep -q "certificate revoked" "$LOG" || check_fail "revoked.pem fails for the wrong reason"
openssl verify -crl_check -CAfile out/ca.pem -CRLfile out/ca-empty.crl.pem out/revoked.pem >"$LOG" 2>&1 ||
  check_fail "revoked.pem does not verify with ca-empty.crl.pem"
openssl verify -crl_check -CAfile out/ca.pem -CRLfile out/ca.crl.pem out/server.pem >"$LOG" 2>&1 ||
  check_fail "server.pem does not verify with ca.crl.pem"
openssl verify -CApath out/ca-dir out/server.pem >"$LOG" 2>&1 ||
  check_fail "server.pem does not verify with -CApath ca-dir"
[[ "$(openssl pkey -in out/encrypted.key -passin "file:out/encrypted.pass" -pubout 2>/dev/null)" == \
  "$(openssl pkey -in out/server.key -pubout 2>/dev/null)" ]] ||
  check_fail "encrypted.key is not the same key as server.key"
for f in "${FILES[@]}"; do
  [[ -s "out/$f" ]] || check_fail "missing out/$f"
done

# --- move into place -------------------------------------------------------------------
rm -f "$DIR/.complete"
for f in "${FILES[@]}"; do
  mv -f "out/$f" "$DIR/$f"
done
rm -rf "$DIR/ca-dir"
mv out/ca-dir "$DIR/ca-dir"
{
  echo "generated by scripts/gen-certs.sh"
  date -u +%Y-%m-%dT%H:%M:%SZ
  openssl version
} >"$DIR/.complete"

echo "certificates in $DIR_SHOWN"
