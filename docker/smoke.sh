#!/usr/bin/env bash
# docker/smoke.sh: build the CPU image and run the compose stack (docker-compose.yml) on this
# machine, then drive it with real photos: enroll through the proxy, identify through each
# replica, kill one replica (the other still answers), restart it (healthy, caught up), tear
# everything down. Prints each step and the figures. Not part of .ci/run: it takes minutes and
# needs a Docker engine (and root, for debootstrap, when the base image is missing).
#
#   DOCKER_HOST=unix:///tmp/docker.sock docker/smoke.sh
#
# Made for a host without Docker Hub and without a bridge network (see the README):
# - base image: BASE_IMAGE (default faceserve-base:bookworm), a Debian bookworm root file
#   system from debootstrap (python3, python3-venv) imported when missing; the same base runs
#   nginx (docker/proxy.Dockerfile) in place of nginx:1.27-alpine;
# - wheels: WHEEL_INDEXES, local PEP 503 "simple" index directories merged with PyPI by
#   docker/wheel_index.py on 127.0.0.1 (local files first) for the build's TORCH_INDEX_URL and
#   PIP_INDEX_URL; default this host's /opt/pypi-more/simple and /opt/pypi/simple when present;
#   WHEEL_INDEXES= uses the Dockerfile's defaults (download.pytorch.org/whl/cpu and PyPI);
# - PostgreSQL: the host's (PG_ADMIN_URL), where the compose file's role and database are
#   created for the run and dropped after it; `postgres` resolves to 127.0.0.1;
# - networking: every container on the host network (compose_plan.py maps the services:
#   replica ports PORT_A/PORT_B, nginx on PORT_PROXY, upstreams rewritten to them).
# Other settings: PEOPLE (photo folder), LFW (LFW deep-funneled folder), NO_CACHE=1 (build
# without the layer cache), KEEP=1 (leave the stack up; remove it with `docker rm -f`).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
BASE_IMAGE=${BASE_IMAGE:-faceserve-base:bookworm}
IMAGE=faceserve:cpu
PROXY_IMAGE=faceserve-proxy:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
PEOPLE=${PEOPLE:-$REPO/../shared/data/people}
LFW=${LFW:-$REPO/../shared/data/lfw/lfw-deepfunneled}
PORT_A=${PORT_A:-18001}
PORT_B=${PORT_B:-18002}
PORT_PROXY=${PORT_PROXY:-18080}
PORT_WHEELS=${PORT_WHEELS:-18090}
if [ -z "${WHEEL_INDEXES+set}" ]; then
  WHEEL_INDEXES=""
  for d in /opt/pypi-more/simple /opt/pypi/simple; do
    [ -d "$d" ] && WHEEL_INDEXES="$WHEEL_INDEXES $d"
  done
fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'smoke: %s\n' "$*" >&2; exit 1; }
now() { echo "$EPOCHREALTIME"; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

WORK=$(mktemp -d /tmp/faceserve-smoke.XXXXXX)
CONTAINERS=(faceserve-proxy faceserve-replica-b faceserve-replica-a faceserve-replica-a-run)
CREATED_DB=""
WHEELS_PID=""
teardown() {
  set +e
  if [ "${KEEP:-}" != 1 ]; then
    say "teardown: removing containers, database, temporary files"
    docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1
    if [ -n "$CREATED_DB" ]; then
      psql "$PG_ADMIN_URL" -qX -c "DROP DATABASE IF EXISTS $PG_DB" -c "DROP ROLE IF EXISTS $PG_USER"
    fi
  fi
  [ -n "$WHEELS_PID" ] && kill "$WHEELS_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap teardown EXIT

command -v docker >/dev/null || die "no docker CLI"
docker info >/dev/null 2>&1 || die "no Docker engine at ${DOCKER_HOST:-the default socket}"
[ -d "$PEOPLE/train" ] || die "no photos at $PEOPLE (set PEOPLE)"
for c in "${CONTAINERS[@]}"; do
  if docker container inspect "$c" >/dev/null 2>&1; then
    die "container $c exists; remove it first"
  fi
done

# ------------------------------------------------------------------ images
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  [ "$BASE_IMAGE" = faceserve-base:bookworm ] || die "base image $BASE_IMAGE missing"
  say "base image: debootstrap bookworm from $DEBIAN_MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log"
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  # The host's own CAs (a TLS-inspecting egress proxy, say): the build reaches PyPI through
  # them as the host does; pip reads PIP_CERT (it does not use the system store).
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
    chroot "$WORK/rootfs" update-ca-certificates >/dev/null
  fi
  tar -C "$WORK/rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' -c 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi
say "base image $BASE_IMAGE: $(docker run --rm --network none "$BASE_IMAGE" python3 -V)"

build_args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg TORCH_VARIANT=cpu)
if [ -n "${WHEEL_INDEXES// /}" ]; then
  # shellcheck disable=SC2086  # a list of folders
  SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} \
    python3 docker/wheel_index.py --port "$PORT_WHEELS" $WHEEL_INDEXES 2>"$WORK/wheels.log" &
  WHEELS_PID=$!
  index=http://127.0.0.1:$PORT_WHEELS/simple
  for _ in $(seq 50); do curl -fsS -o /dev/null "$index/pip/" 2>/dev/null && break; sleep 0.2; done
  build_args+=(--build-arg "TORCH_INDEX_URL=$index" --build-arg "PIP_INDEX_URL=$index")
  say "wheels: $index (docker/wheel_index.py): local files of$WHEEL_INDEXES first, then PyPI"
fi
[ "${NO_CACHE:-}" = 1 ] && build_args+=(--no-cache)

say "docker build -t $IMAGE ${build_args[*]} ."
t0=$(now)
DOCKER_BUILDKIT=0 docker build -t "$IMAGE" "${build_args[@]}" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; die "image build failed"; }
BUILD_S=$(since "$t0")
IMAGE_BYTES=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "built $IMAGE in ${BUILD_S}s, $((IMAGE_BYTES / 1024 / 1024)) MiB"

say "docker build -t $PROXY_IMAGE -f docker/proxy.Dockerfile docker"
DOCKER_BUILDKIT=0 docker build -t "$PROXY_IMAGE" --network host \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" -f docker/proxy.Dockerfile docker >"$WORK/proxy.log" 2>&1 \
  || { tail -20 "$WORK/proxy.log"; die "proxy image build failed"; }
[ -n "$WHEELS_PID" ] && kill "$WHEELS_PID" && WHEELS_PID=""

# ------------------------------------------------------------------ postgres
read -r PG_USER PG_DB < <(python3 -c "
import yaml; e = yaml.safe_load(open('docker-compose.yml'))['services']['postgres']['environment']
print(e['POSTGRES_USER'], e['POSTGRES_DB'])")
POSTGRES_PASSWORD=$(python3 -c "import secrets; print(secrets.token_urlsafe(24))")
export POSTGRES_PASSWORD
say "postgres: host server $PG_ADMIN_URL, role $PG_USER and database $PG_DB for this run"
pg_isready -d "$PG_ADMIN_URL" >/dev/null || die "PostgreSQL at $PG_ADMIN_URL is not ready"
exists=$(psql "$PG_ADMIN_URL" -tAX -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'
  UNION ALL SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")
[ -z "$exists" ] || die "role or database $PG_USER/$PG_DB exists on the host server; not touching it"
CREATED_DB=1
psql "$PG_ADMIN_URL" -qX -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$POSTGRES_PASSWORD'" \
  -c "CREATE DATABASE $PG_DB OWNER $PG_USER"

# ------------------------------------------------------------------ the stack
ports=(--port "replica-a=$PORT_A" --port "replica-b=$PORT_B" --port "proxy=$PORT_PROXY")
plan() { python3 docker/compose_plan.py "$@" "${ports[@]}"; }

say "keys create (docker compose run --rm replica-a keys create ...)"
mapfile -t run_args < <(plan replica-a --oneoff)
TOKEN=$(docker run "${run_args[@]}" keys create --scope admin --scope enroll \
  --scope recognize --name smoke 2>"$WORK/keys.log") || { cat "$WORK/keys.log"; die "keys create failed"; }
AUTH=(-H "Authorization: Bearer $TOKEN")

ready_at() {  # seconds from $2 until GET /readyz on port $1 answers 200
  local deadline=$((SECONDS + 600))
  until curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "port $1 not ready after 600 s"
    sleep 0.25
  done
  since "$2"
}
healthy() {  # wait for Docker's own health status, as compose's depends_on does
  local deadline=$((SECONDS + 600))
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; do
    [ $SECONDS -lt $deadline ] || die "$1 not healthy after 600 s"
    sleep 1
  done
}
rss_mib() {
  local pid
  pid=$(docker inspect -f '{{.State.Pid}}' "$1")
  awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"
}

say "create replica-a and replica-b (image $IMAGE, compose environment, tmpfs data dir)"
t0=$(now)
for r in replica-a replica-b; do
  mapfile -t run_args < <(plan "$r")
  docker create "${run_args[@]}" >/dev/null
done
CREATE_S=$(since "$t0")
say "created in ${CREATE_S}s (the vfs storage driver copies the whole image per container); start both"
t_start=$(now)
docker start faceserve-replica-a faceserve-replica-b >/dev/null
READY_A=$(ready_at "$PORT_A" "$t_start")
READY_B=$(ready_at "$PORT_B" "$t_start")
say "ready (/readyz 200) after: replica-a ${READY_A}s, replica-b ${READY_B}s (both starting together)"
healthy faceserve-replica-a
healthy faceserve-replica-b
say "both healthy (Docker HEALTHCHECK) after $(since "$t_start")s"

say "start proxy (nginx from $PROXY_IMAGE, docker/nginx.conf with host ports)"
mapfile -t run_args < <(plan proxy --image "$PROXY_IMAGE" --nginx-out "$WORK/nginx.conf")
docker run -d "${run_args[@]}" >/dev/null
healthy faceserve-proxy
say "proxy healthy; stack: $(docker ps --format '{{.Names}} ({{.Status}})' | grep faceserve- | paste -sd ';' -)"

# ------------------------------------------------------------------ exercise
PROXY=http://127.0.0.1:$PORT_PROXY
enroll() {  # enroll SUBJECT PHOTO... through the proxy; prints the faces stored
  local subject=$1 form=()
  shift
  for f in "$@"; do form+=(-F "images=@$f"); done
  curl -fsS "${AUTH[@]}" -F "subject_id=$subject" "${form[@]}" "$PROXY/enroll" \
    | json "d['created']"
}
identify() {  # identify PORT PHOTO: the matched subjects, sorted (unknown faces left out)
  curl -fsS "${AUTH[@]}" -F "image=@$2" "http://127.0.0.1:$1/identify" \
    | json "' '.join(sorted(f['match']['subject_id'] for f in d['faces'] if f.get('match')))"
}
check() {  # check LABEL GOT EXPECTED
  if [ "$2" = "$3" ]; then printf '    %-44s %s\n' "$1" "$2"
  else die "$1: got '$2', expected '$3'"; fi
}

say "enroll through the proxy: $PEOPLE/train"
for dir in "$PEOPLE"/train/*/; do
  subject=$(basename "$dir")
  printf '    %-16s %s photo(s), %s face(s) stored\n' "$subject" \
    "$(find "$dir" -type f | wc -l)" "$(enroll "$subject" "$dir"*)"
done

declare -A EXPECTED=(
  [alex_lacamoire1.jpg]="alex_lacamoire" [johnsnow_test1.jpg]="kit_harington"
  [obama1.jpg]="obama" [kit_with_rose.jpg]="kit_harington rose_leslie"
  [obama_and_biden.jpg]="biden obama")
for r in "replica-a $PORT_A" "replica-b $PORT_B"; do
  read -r name port <<<"$r"
  say "identify through $name (port $port) directly: $PEOPLE/test"
  for photo in "${!EXPECTED[@]}"; do
    check "$photo" "$(identify "$port" "$PEOPLE/test/$photo")" "${EXPECTED[$photo]}"
  done
done

if [ -d "$LFW/Colin_Powell" ]; then
  say "one enroll + identify round trip through the proxy (LFW Colin_Powell 0001, then 0002)"
  t0=$(now)
  enroll colin_powell "$LFW/Colin_Powell/Colin_Powell_0001.jpg" >/dev/null
  t1=$(now)
  got=$(curl -fsS "${AUTH[@]}" -F "image=@$LFW/Colin_Powell/Colin_Powell_0002.jpg" "$PROXY/identify" \
        | json "' '.join(f['match']['subject_id'] for f in d['faces'] if f.get('match'))")
  ROUND_TRIP="$(since "$t0") s (enroll $(python3 -c "print(f'{$t1 - $t0:.2f}')") s)"
  check "Colin_Powell_0002.jpg via proxy" "$got" colin_powell
  NEW_SUBJECT=tony_blair
  NEW_PHOTOS=("$LFW/Tony_Blair/Tony_Blair_0001.jpg" "$LFW/Tony_Blair/Tony_Blair_0002.jpg")
  NEW_PROBE=$LFW/Tony_Blair/Tony_Blair_0003.jpg
else
  ROUND_TRIP="not measured (no LFW at $LFW)"
  NEW_SUBJECT=obama_again
  NEW_PHOTOS=("$PEOPLE/misc/obama-480p.jpg")
  NEW_PROBE=$PEOPLE/misc/obama-720p.jpg
fi
RSS_A=$(rss_mib faceserve-replica-a)
RSS_B=$(rss_mib faceserve-replica-b)
say "RSS after the requests: replica-a ${RSS_A} MiB, replica-b ${RSS_B} MiB"

say "docker kill faceserve-replica-a"
docker kill faceserve-replica-a >/dev/null
sleep 1
say "replica-a: $(docker inspect -f '{{.State.Status}}' faceserve-replica-a); the proxy and replica-b still answer"
for i in 1 2 3 4; do
  check "obama1.jpg via proxy, request $i" "$(identify "$PORT_PROXY" "$PEOPLE/test/obama1.jpg")" obama
done
check "obama_and_biden.jpg via replica-b" \
  "$(identify "$PORT_B" "$PEOPLE/test/obama_and_biden.jpg")" "biden obama"
say "enroll $NEW_SUBJECT through the proxy while replica-a is down"
printf '    %-16s %s face(s) stored\n' "$NEW_SUBJECT" "$(enroll "$NEW_SUBJECT" "${NEW_PHOTOS[@]}")"

say "docker start faceserve-replica-a"
t0=$(now)
docker start faceserve-replica-a >/dev/null
RESTART_S=$(ready_at "$PORT_A" "$t0")
say "replica-a ready again after ${RESTART_S}s"
healthy faceserve-replica-a
RESTART_HEALTHY_S=$(since "$t0")
say "replica-a healthy (Docker HEALTHCHECK) again after ${RESTART_HEALTHY_S}s; its data dir:" \
  "$(docker exec faceserve-replica-a stat -c '%n %U:%G mode %a' /run/faceserve)"
check "$(basename "$NEW_PROBE") via replica-a" "$(identify "$PORT_A" "$NEW_PROBE")" "$NEW_SUBJECT"
for r in "replica-a $PORT_A" "replica-b $PORT_B"; do
  read -r name port <<<"$r"
  printf '    %-10s replication: %s\n' "$name" "$(curl -fsS "http://127.0.0.1:$port/readyz" \
    | json "{k: d['replication'][k] for k in ('applied_change_id', 'head_change_id', 'changes_behind')}")"
done

# ------------------------------------------------------------------ figures
cat <<EOF
==> figures
    image $IMAGE (torch 2.14.1 from ${WHEEL_INDEXES:-the PyTorch CPU index}): $((IMAGE_BYTES / 1024 / 1024)) MiB
    build time:                  ${BUILD_S} s$([ "${NO_CACHE:-}" = 1 ] && echo " (--no-cache)")
    container create (vfs copy): ${CREATE_S} s for both replicas
    cold start to ready:         replica-a ${READY_A} s, replica-b ${READY_B} s (started together)
    restart to ready:            replica-a ${RESTART_S} s (healthy after ${RESTART_HEALTHY_S} s)
    RSS per replica:             replica-a ${RSS_A} MiB, replica-b ${RSS_B} MiB
    enroll+identify round trip:  ${ROUND_TRIP} through the proxy
EOF
say "smoke test passed"
