#!/usr/bin/env bash
# Builds the minga image, starts docker-compose.yml's swarm (host networking, 127.0.0.1 only),
# waits until the gateway's /health says every layer is covered, generates through it, and takes
# the stack down again. Needs a Docker engine and `docker compose` (or `docker-compose` 1.27+).
#
#   scripts/docker-smoke.sh                       # model: models/stories260k (or MINGA_MODEL_DIR)
#   MINGA_SMOKE_BASE=debian scripts/docker-smoke.sh
#
# MINGA_SMOKE_BASE=debian: for a machine that cannot reach an image registry, first build the
# Dockerfile's base image (node:lts-bookworm-slim) locally from Debian packages with debootstrap
# and this machine's own Node (it must be Node ≥ 20.19); needs root and the Debian mirror. That
# base trusts the certificate authorities this machine trusts (its /etc/ssl/certs bundle), so that
# the image's install step works behind the same TLS proxy as the machine's own npm.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
if $DOCKER compose version >/dev/null 2>&1; then COMPOSE=("$DOCKER" compose); else COMPOSE=(docker-compose); fi
export MINGA_PORT=${MINGA_PORT:-18080}
if [ -z "${MINGA_MODEL_DIR:-}" ]; then
  for dir in models/stories260k ../shared/models/stories260k; do
    if [ -f "$dir/config.json" ]; then MINGA_MODEL_DIR=$(cd "$dir" && pwd); break; fi
  done
fi
export MINGA_MODEL_DIR=${MINGA_MODEL_DIR:?no model: set MINGA_MODEL_DIR}
gateway="http://127.0.0.1:$MINGA_PORT"
log() { printf 'docker-smoke: %s\n' "$*" >&2; }

BASE=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | head -1)
if [ "${MINGA_SMOKE_BASE:-}" = debian ] && ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  log "building $BASE from Debian packages in $rootfs (debootstrap, then this machine's Node $(node --version))"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >&2
  cp "$(command -v node)" "$rootfs/usr/local/bin/node"
  npm_root=$(npm root -g)
  mkdir -p "$rootfs/usr/local/lib/node_modules"
  cp -r "$npm_root/npm" "$rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  mkdir -p "$rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  chroot "$rootfs" sh -c 'groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/sh --create-home node'
  tar -C "$rootfs" -c . | $DOCKER import --change 'CMD ["node"]' \
    --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' - "$BASE" >&2
  rm -rf "$rootfs"
fi

log "building the image"
$DOCKER build --network host -t minga:local . >&2

cleanup() {
  log "stopping the stack"
  "${COMPOSE[@]}" logs --no-color >&2 || true
  "${COMPOSE[@]}" down --volumes --timeout 40 >&2 || true
}
trap cleanup EXIT
log "starting the stack: bootstrap, three servers (one after another), gateway on $gateway"
"${COMPOSE[@]}" up --detach --no-build >&2

deadline=$((SECONDS + 600))
until curl -fsS "$gateway/health" >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then log "the gateway never became healthy"; exit 1; fi
  sleep 2
done

json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{process.stdout.write(String(eval("(j)=>"+process.argv[1])(JSON.parse(s))))})' "$1"; }
model=$(curl -fsS "$gateway/v1/models" | json 'j.data[0].id')
# (503 and a retry-after while a layer's record is being renewed on a loaded machine: curl retries)
answer=$(curl -fsS --retry 10 --retry-delay 3 "$gateway/v1/completions" -H 'content-type: application/json' \
  -d "{\"model\":\"$model\",\"prompt\":\"Once upon a time\",\"max_tokens\":16,\"temperature\":0}")
text=$(printf '%s' "$answer" | json 'j.choices[0].text')
if [ -z "$text" ]; then log "no text in $answer"; exit 1; fi
log "servers: $(curl -fsS "$gateway/v1/swarm" | json 'j.servers.map(x => x.name + " [" + x.start + ", " + x.end + ")").join(", ")')"
log "generated through the swarm: Once upon a time$text"
curl -fsS "$gateway/" | grep -q 'Swarm map' || { log "the page is not served"; exit 1; }
log "ok"
