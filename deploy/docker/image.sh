#!/usr/bin/env bash
# Build slipguard's image here, with buildah (no Docker engine, no reachable registry):
# a base from Debian's packages (mmdebstrap, imported once and kept), then
# deploy/docker/Dockerfile with that base. Layers are cached (--layers): a rebuild after a
# code change reuses the dependency layer.
#
#   deploy/docker/image.sh [TAG]     # default localhost/slipguard:dev; prints the tag
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-localhost/slipguard:dev}
BASE=${SLIPGUARD_IMAGE_BASE:-localhost/slipguard-base:bookworm}
say() { echo "image: $*" >&2; }

for tool in buildah podman mmdebstrap; do
  command -v "$tool" >/dev/null || { say "$tool not found: run deploy/local/tools.sh (Debian: buildah podman mmdebstrap)"; exit 1; }
done

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  say "making the base $BASE from Debian bookworm (python3, venv, CA certificates)"
  tar=$(mktemp --suffix=.tar)
  trap 'rm -f "$tar"' EXIT
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar" >&2
  podman import --quiet "$tar" "$BASE" >/dev/null
fi

# The base by digest, as the Dockerfile names its default: the build uses exactly the image
# made above, whatever the tag points to.
digest=$(buildah images --no-trunc --format '{{.Digest}}' "$BASE" | head -1)
[[ $digest == sha256:* ]] || { say "no digest for $BASE"; exit 1; }
name=$BASE; [[ ${BASE##*/} == *:* ]] && name=${BASE%:*}  # (the tag off; a registry's port stays)
base_ref="$name@$digest"

# The native stage's base: Debian bookworm with a C linker and Python, and this machine's Rust
# toolchain (rustup's, as `make venv` uses; only what building needs: no docs, no sources),
# made once and kept; remade when the toolchain here changes version.
RUST_BASE=${SLIPGUARD_IMAGE_RUST:-localhost/slipguard-rust:bookworm}
command -v rustc >/dev/null || { say "rustc not found: install Rust (rustup) to build the native record path"; exit 1; }
rust_version=$(rustc --version)
if [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "dev.slipguard.rustc"}}' "$RUST_BASE" \
        2>/dev/null)" != "$rust_version" ]; then
  say "making the native builder $RUST_BASE: bookworm (gcc, python3) and $rust_version"
  rtar=$(mktemp --suffix=.tar)
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,gcc,libc6-dev bookworm "$rtar" >&2
  podman import --quiet "$rtar" "$RUST_BASE-os" >/dev/null
  rm -f "$rtar"
  sysroot=$(rustc --print sysroot)
  ctr=$(buildah from --quiet "$RUST_BASE-os")
  buildah copy --quiet "$ctr" "$sysroot/lib" /opt/rust/lib >/dev/null
  for tool in cargo rustc; do buildah copy --quiet "$ctr" "$sysroot/bin/$tool" /opt/rust/bin/ >/dev/null; done
  buildah config --env PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/opt/cargo --annotation "dev.slipguard.rustc=$rust_version" "$ctr"
  buildah commit --quiet --rm "$ctr" "$RUST_BASE" >/dev/null
  buildah rmi "$RUST_BASE-os" >/dev/null 2>&1 || true
fi
rust_digest=$(buildah images --no-trunc --format '{{.Digest}}' "$RUST_BASE" | head -1)
rust_name=$RUST_BASE; [[ ${RUST_BASE##*/} == *:* ]] && rust_name=${RUST_BASE%:*}

# pip in the build trusts what pip here trusts (a TLS proxy's CA, say).
ca=()
host_ca=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
  ca=(--volume "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

say "building $TAG"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# The revision also as --label: with --layers, buildah reuses a cached LABEL layer made with
# an earlier REVISION (seen here: the image of one commit labelled with the one before).
buildah bud --quiet --isolation chroot --network host --layers -f deploy/docker/Dockerfile "${ca[@]}" \
  --build-arg BASE="$base_ref" --build-arg RUST_BASE="$rust_name@$rust_digest" --build-arg REVISION="$revision" \
  --label "org.opencontainers.image.revision=$revision" -t "$TAG" . >&2
size=$(buildah images --format '{{.Size}}' "$TAG" | head -1)
say "built $TAG ($size)"
echo "$TAG"
