#!/usr/bin/env bash
# The local stack: a real single-node Apache Kafka (KRaft) from Maven Central and a real
# PostgreSQL from the machine's installed binaries.
#
#   deploy/local/stack.sh up | down | status | kafka-restart clean|hard|fresh | kafka-freeze | kafka-thaw | ...
#
# Everything lives under .stack/ (git-ignored). `up` is idempotent and waits until each
# service answers a real client; `down` stops only what `up` started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK=${SLIPGUARD_STACK_DIR:-$ROOT/.stack}
KAFKA_DIR=$STACK/kafka
KAFKA_PORT=${SLIPGUARD_KAFKA_PORT:-9092}
CONTROLLER_PORT=${SLIPGUARD_KAFKA_CONTROLLER_PORT:-9093}
SECURE_PORT=${SLIPGUARD_KAFKA_SECURE_PORT:-9094}
TLS_DIR=$STACK/tls
SECRETS=$STACK/secrets
SCRAM_USERS="admin slipguard-join slipguard-writer slipguard-lag slipguard-admin"
PG_PORT=${SLIPGUARD_PG_PORT:-25432}  # below the ephemeral range (32768-60999): a client's source port never takes it
LOCAL_DB_URL="postgresql://slipguard:slipguard@127.0.0.1:${PG_PORT}/slipguard"

die() { echo "stack: $*" >&2; exit 1; }
say() { echo "stack: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- TLS
# A CA of the stack's own and a certificate for each server (127.0.0.1 and localhost),
# made once under .stack/tls (never committed). Clients trust tls/ca.pem.
tls_make() {
  [ -f "$TLS_DIR/.complete" ] && return
  command -v openssl >/dev/null || die "openssl not found: apt-get install openssl (it makes the local CA)"
  rm -rf "$TLS_DIR"; mkdir -p "$TLS_DIR"; chmod 755 "$TLS_DIR"
  local log=$TLS_DIR/openssl.log name
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=slipguard local CA" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" >"$log" 2>&1 || die "openssl failed; see $log"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$TLS_DIR/server.ext"
  for name in kafka postgres; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$TLS_DIR/$name.key" \
      -out "$TLS_DIR/$name.csr" >>"$log" 2>&1 || die "openssl failed; see $log"
    openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
      -days 825 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/$name.pem" >>"$log" 2>&1 || die "openssl failed; see $log"
  done
  cat "$TLS_DIR/kafka.key" "$TLS_DIR/kafka.pem" >"$TLS_DIR/kafka-keystore.pem"  # PKCS#8 key, then its chain
  chmod 600 "$TLS_DIR"/*.key "$TLS_DIR/kafka-keystore.pem"
  touch "$TLS_DIR/.complete"
}

# ---------------------------------------------------------------- Kafka
kafka_pid() { [ -f "$KAFKA_DIR/kafka.pid" ] && kill -0 "$(cat "$KAFKA_DIR/kafka.pid")" 2>/dev/null && cat "$KAFKA_DIR/kafka.pid"; }

kafka_fetch() { jars_fetch "$ROOT/deploy/local/pom.xml" "$KAFKA_DIR/libs" "Apache Kafka"; }

# A Kafka before 4.0 (no KIP-848 consumer protocol), for the tests of the join's group
# protocol choice only; never started by `up`.
KAFKA3_DIR=$STACK/kafka-3
kafka3_fetch() { jars_fetch "$ROOT/deploy/local/pom-kafka3.xml" "$KAFKA3_DIR/libs" "Apache Kafka 3 (tests)"; }

jars_fetch() {  # pom, libs directory, what
  local pom=$1 libs=$2 what=$3
  if [ -f "$libs/.complete" ] && cmp -s "$pom" "$libs/.pom"; then
    return
  fi
  command -v java >/dev/null || die "java not found: install OpenJDK 17 or newer (Kafka 4 needs it)"
  command -v mvn >/dev/null || die "mvn not found: install Maven; it fetches Kafka from Maven Central"
  local log
  log="$(dirname "$libs")/maven.log"
  say "fetching $what from Maven Central (first run only; log: $log)"
  mkdir -p "$(dirname "$libs")"
  rm -rf "$libs"
  if ! mvn -B -q -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "Maven could not fetch $what from Maven Central; see $log"
  fi
  cp "$pom" "$libs/.pom"
  touch "$libs/.complete"
}

kafka_java() { java -cp "$KAFKA_DIR/libs/*" -Dlog4j2.configurationFile="$ROOT/deploy/local/log4j2.properties" \
  -Dkafka.logs.dir="$KAFKA_DIR/logs" "$@"; }

kafka_up() {
  if kafka_pid >/dev/null; then say "kafka already running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"; return; fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is busy but not by this stack's Kafka; stop that process or set SLIPGUARD_KAFKA_PORT"
  port_open "$CONTROLLER_PORT" && die "port $CONTROLLER_PORT (Kafka controller) is busy; stop that process or set SLIPGUARD_KAFKA_CONTROLLER_PORT"
  port_open "$SECURE_PORT" && die "port $SECURE_PORT (Kafka SASL_SSL) is busy; stop that process or set SLIPGUARD_KAFKA_SECURE_PORT"
  kafka_fetch
  tls_make
  mkdir -p "$KAFKA_DIR/logs"
  sed -e "s#@DATA@#$KAFKA_DIR/data#" -e "s#@PORT@#$KAFKA_PORT#g" -e "s#@CPORT@#$CONTROLLER_PORT#g" \
    -e "s#@SPORT@#$SECURE_PORT#g" -e "s#@TLS@#$TLS_DIR#g" \
    "$ROOT/deploy/local/server.properties" >"$KAFKA_DIR/server.properties"
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    say "formatting Kafka storage (KRaft)"
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid)
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
      >"$KAFKA_DIR/logs/format.log" 2>&1 || die "Kafka storage format failed; see $KAFKA_DIR/logs/format.log"
  fi
  say "starting Kafka on 127.0.0.1:$KAFKA_PORT (log: $KAFKA_DIR/logs/server.log)"
  nohup setsid java -Xms512m -Xmx1g -XX:+UseG1GC -cp "$KAFKA_DIR/libs/*" \
    -Dlog4j2.configurationFile="$ROOT/deploy/local/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    kafka.Kafka "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/logs/stdout.log" 2>&1 &
  echo $! >"$KAFKA_DIR/kafka.pid"
  local i
  for i in $(seq 1 120); do
    kafka_pid >/dev/null || die "Kafka exited during start; see $KAFKA_DIR/logs/server.log and $KAFKA_DIR/logs/stdout.log"
    if port_open "$KAFKA_PORT" && kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1; then
      say "kafka ready on 127.0.0.1:$KAFKA_PORT (SASL_SSL on 127.0.0.1:$SECURE_PORT)"
      scram_users
      return
    fi
    sleep 1
  done
  die "Kafka did not answer on 127.0.0.1:$KAFKA_PORT within 120 s; see $KAFKA_DIR/logs/server.log"
}

kafka_down() {
  local pid
  if pid=$(kafka_pid); then
    say "stopping kafka (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$KAFKA_DIR/kafka.pid"
}

# SCRAM-SHA-512 users for the SASL_SSL listener, once per cluster (a fresh format loses
# them): the super user `admin` and one principal per role (docs/security.md). Passwords
# are generated and kept as files under .stack/secrets, as Kubernetes mounts secrets.
scram_users() {
  [ -f "$KAFKA_DIR/data/.slipguard-scram" ] && return
  mkdir -p "$SECRETS"; chmod 700 "$SECRETS"
  local user file
  for user in $SCRAM_USERS; do
    file=$SECRETS/kafka-$user.password
    [ -s "$file" ] || { openssl rand -hex 16 | tr -d '\n' >"$file"; chmod 600 "$file"; }
    # (On the command line of a local tool for a moment: these are the local stack's own users.)
    kafka_java kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter --entity-type users \
      --entity-name "$user" --add-config "SCRAM-SHA-512=[iterations=8192,password=$(cat "$file")]" \
      >>"$KAFKA_DIR/logs/scram.log" 2>&1 || die "could not create SCRAM user $user; see $KAFKA_DIR/logs/scram.log"
  done
  touch "$KAFKA_DIR/data/.slipguard-scram"
  say "SCRAM users: $SCRAM_USERS (passwords in $SECRETS)"
}

# A broker restart as a rolling upgrade does it (clean: SIGTERM, controlled shutdown,
# start) or as a crash does (hard: SIGKILL, start; the log is recovered at start). With
# `fresh`, the data directory is wiped and formatted anew: a brand-new cluster, whose
# group coordinators answer COORDINATOR_NOT_AVAILABLE / NOT_COORDINATOR for a while.
kafka_restart() {
  local pid
  case "$1" in
    clean) kafka_down ;;
    hard)
      pid=$(kafka_pid) || die "kafka is not running"
      kill -9 "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      rm -f "$KAFKA_DIR/kafka.pid"
      say "kafka (pid $pid) killed (SIGKILL)" ;;
    fresh) kafka_down; rm -rf "$KAFKA_DIR/data"; say "kafka data wiped; formatting a new cluster" ;;
    *) die "kafka-restart takes clean, hard or fresh" ;;
  esac
  # The port may linger in TIME_WAIT/close for a moment after a kill.
  for _ in $(seq 1 50); do port_open "$KAFKA_PORT" || break; sleep 0.2; done
  kafka_up
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  local d
  for d in "${SLIPGUARD_PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

# PostgreSQL refuses to run as root; as root the private cluster runs as the `postgres` user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_data_dir() {
  if [ -f "$STACK/pg.location" ]; then cat "$STACK/pg.location"; return; fi
  local d=$STACK/pg
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$STACK"
    # The postgres user must be able to reach the data directory; a checkout under /root is not.
    if ! runuser -u postgres -- test -x "$STACK"; then d=/var/tmp/slipguard-pg-$(echo "$ROOT" | md5sum | cut -c1-8); fi
  fi
  mkdir -p "$STACK"; echo "$d" >"$STACK/pg.location"; echo "$d"
}

url_answers() { [ -n "${1:-}" ] && command -v psql >/dev/null && PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

pg_up() {
  if [ -n "${SLIPGUARD_DATABASE_URL:-}" ] && [ "$SLIPGUARD_DATABASE_URL" != "$LOCAL_DB_URL" ]; then
    url_answers "$SLIPGUARD_DATABASE_URL" && { say "using PostgreSQL at SLIPGUARD_DATABASE_URL (already answering)"; return; }
    die "SLIPGUARD_DATABASE_URL is set but does not answer; unset it to start a private PostgreSQL"
  fi
  url_answers "$LOCAL_DB_URL" && { say "postgres already running on 127.0.0.1:$PG_PORT"; return; }
  local bin data
  bin=$(pg_bin) || die "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set SLIPGUARD_PG_BIN"
  port_open "$PG_PORT" && die "port $PG_PORT is busy but not by this stack's PostgreSQL; stop it or set SLIPGUARD_PG_PORT"
  data=$(pg_data_dir)
  if [ ! -f "$data/PG_VERSION" ]; then
    say "initialising a private PostgreSQL cluster in $data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres: "$data"
    local pw; pw=$(mktemp); echo slipguard >"$pw"; chmod 644 "$pw"
    as_pg "$bin/initdb" -D "$data" -U slipguard --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C >"$STACK/pg-initdb.log" 2>&1 || { rm -f "$pw"; die "initdb failed; see $STACK/pg-initdb.log"; }
    rm -f "$pw"
  fi
  # TLS with the stack's CA (clients: sslmode=verify-full, sslrootcert=.stack/tls/ca.pem); plain stays allowed.
  tls_make
  install -m 600 "$TLS_DIR/postgres.key" "$data/server.key"; install -m 644 "$TLS_DIR/postgres.pem" "$data/server.crt"
  [ "$(id -u)" = 0 ] && chown postgres: "$data/server.key" "$data/server.crt"
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $data/server.log)"
  as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $data -c max_connections=200 -c fsync=on -c ssl=on" start >/dev/null \
    || die "PostgreSQL did not start; see $data/server.log"
  if ! as_pg "$bin/psql" -h "$data" -p "$PG_PORT" -U slipguard -d postgres -Atqc \
      "select 1 from pg_database where datname='slipguard'" | grep -q 1; then
    as_pg "$bin/createdb" -h "$data" -p "$PG_PORT" -U slipguard slipguard
  fi
  for _ in $(seq 1 30); do url_answers "$LOCAL_DB_URL" && { say "postgres ready: $LOCAL_DB_URL"; return; }; sleep 1; done
  die "PostgreSQL does not answer at $LOCAL_DB_URL; see $data/server.log"
}

pg_down() {
  local bin data
  [ -f "$STACK/pg.location" ] || return 0
  data=$(cat "$STACK/pg.location"); bin=$(pg_bin) || return 0
  if [ -f "$data/postmaster.pid" ]; then
    say "stopping postgres"
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
  fi
}

# The recovery writer's test needs PostgreSQL to go away and come back; these do just that.
pg_stop_only() { pg_down; }

# A broker that stops answering (a long GC pause, a network partition) without a restart:
# its connections stay open and nothing comes back until it is thawed.
kafka_signal() {
  local pid
  pid=$(kafka_pid) || die "kafka is not running"
  kill "-$1" "$pid"
  say "kafka (pid $pid): $2"
}

status() {
  if kafka_pid >/dev/null; then echo "kafka: running (pid $(kafka_pid)) 127.0.0.1:$KAFKA_PORT"; else echo "kafka: stopped"; fi
  if url_answers "${SLIPGUARD_DATABASE_URL:-$LOCAL_DB_URL}"; then echo "postgres: answering"; else echo "postgres: not answering"; fi
}

case "${1:-}" in
  up) kafka_up; pg_up ;;
  down) kafka_down; pg_down ;;
  status) status ;;
  kafka-up) kafka_up ;;
  kafka-down) kafka_down ;;
  kafka-freeze) kafka_signal STOP "frozen (SIGSTOP)" ;;
  kafka-thaw) kafka_signal CONT "thawed (SIGCONT)" ;;
  kafka-restart) kafka_restart "${2:-clean}" ;;
  pg-up) pg_up ;;
  pg-down) pg_stop_only ;;
  kafka-tool) shift; kafka_fetch; kafka_java "$@" ;;
  kafka3-fetch) kafka3_fetch ;;
  *) echo "usage: $0 up|down|status|pg-up|pg-down|kafka-up|kafka-down|kafka-freeze|kafka-thaw|kafka-restart [clean|hard|fresh]|kafka-tool CLASS ARGS|kafka3-fetch" >&2; exit 2 ;;
esac
