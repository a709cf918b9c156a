#!/usr/bin/env bash
# Runs the mesh identity path on loopback and shows what it proved:
#   isthmusd (mesh CA) -> bootstrap token from isthmusctl -> isthmus-proxy gets its certificate
#   over gRPC/TLS -> openssl verifies the chain -> a revoked token is refused.
# Everything it starts is stopped on exit. Until `isthmusctl demo` exists, this is the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked --quiet
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port); debug=$(port); admin=$(port); xds=$(port)
id=spiffe://red.local/ns/bookinfo/sa/ratings
mkdir -p "$work/config"

step() { printf '\n== %s\n' "$*"; }

step "start isthmusd for trust domain red.local (CA on 127.0.0.1:$grpc)"
"$bin/isthmusd" --config-dir "$work/config" --state-dir "$work/state" --trust-domain red.local \
  --grpc-addr "127.0.0.1:$grpc" --debug-addr "127.0.0.1:$debug" --xds-plaintext-addr "127.0.0.1:$xds" 2>"$work/isthmusd.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$debug/ready" >/dev/null && break; sleep 0.1; done

step "isthmusctl issues a bootstrap token bound to $id"
"$bin/isthmusctl" token create --state-dir "$work/state" --identity "$id" --out "$work/token"

step "isthmus-proxy obtains its certificate with that token"
"$bin/isthmus-proxy" --identity "$id" --ca-address "127.0.0.1:$grpc" --root-cert "$work/state/root-cert.pem" \
  --token-file "$work/token" --admin-addr "127.0.0.1:$admin" 2>"$work/proxy.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
curl -s "127.0.0.1:$admin/certs" | python3 -c 'import json,sys; d=json.load(sys.stdin); c=d["certificates"][0]["cert_chain"][0]; print("identity:", d["identity"]); print("valid:", c["valid_from"], "->", c["expiration_time"])'

step "openssl verifies a certificate from the CA against the mesh root"
"$bin/isthmusctl" cert request --ca-addr "127.0.0.1:$grpc" --root "$work/state/root-cert.pem" \
  --token-file "$work/token" --identity "$id" --out-dir "$work/cert"
openssl verify -CAfile "$work/state/root-cert.pem" "$work/cert/cert-chain.pem"

step "asking for another identity with the same token is refused"
if "$bin/isthmusctl" cert request --ca-addr "127.0.0.1:$grpc" --root "$work/state/root-cert.pem" \
  --token-file "$work/token" --identity spiffe://red.local/ns/bookinfo/sa/admin --out-dir "$work/x" 2>"$work/err"; then
  echo "FAIL: the CA signed an identity the token is not bound to"; exit 1
fi
cat "$work/err"

step "after revocation the token is refused"
tid=$(cut -d. -f2 "$work/token")
"$bin/isthmusctl" token revoke --state-dir "$work/state" "$tid"
if "$bin/isthmusctl" cert request --ca-addr "127.0.0.1:$grpc" --root "$work/state/root-cert.pem" \
  --token-file "$work/token" --identity "$id" --out-dir "$work/y" 2>"$work/err"; then
  echo "FAIL: a revoked token was accepted"; exit 1
fi
cat "$work/err"

step "CA metrics"
curl -s "127.0.0.1:$debug/metrics" | grep -E '^isthmus_ca_'
printf '\nall steps passed\n'
