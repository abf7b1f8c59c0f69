#!/usr/bin/env bash
# The local stack: a real single-node Apache Kafka (KRaft) from Maven Central and a real
# PostgreSQL from the machine's installed binaries; on demand, a replicated three-broker
# cluster behind Toxiproxy for the fault tests (tests/cluster).
#
#   deploy/local/stack.sh up | down | status | kafka-restart clean|hard|fresh | kafka-freeze | kafka-thaw |
#                         pg-standby-up | pg-primary-kill | pg-promote | pg-failback | pg-failover-reset | ...
#   deploy/local/stack.sh cluster-up | cluster-down | cluster-status
#   deploy/local/stack.sh cluster-broker kill|stop|start|restart|freeze|thaw N   (N = 1, 2, 3)
#
# Everything lives under .stack/ (git-ignored). `up` and `cluster-up` are idempotent and
# wait until each service answers a real client; `down` stops what `up` and `cluster-up`
# started, `cluster-down` the cluster alone.
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
pid_in() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }
kafka_pid() { pid_in "$KAFKA_DIR/kafka.pid"; }

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

# A Kafka node in the background: its directory (server.properties; logs/ and kafka.pid
# are written there) and its JVM's options (memory).
kafka_start() {
  local dir=$1 options=$2
  mkdir -p "$dir/logs"
  # shellcheck disable=SC2086  # (several options)
  nohup setsid java $options -XX:+UseG1GC -cp "$KAFKA_DIR/libs/*" \
    -Dlog4j2.configurationFile="$ROOT/deploy/local/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
    kafka.Kafka "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 &
  echo $! >"$dir/kafka.pid"
}

kafka_format() {  # a node's directory, the cluster id
  kafka_java kafka.tools.StorageTool format -t "$2" -c "$1/server.properties" \
    >"$1/logs/format.log" 2>&1 || die "Kafka storage format failed; see $1/logs/format.log"
}

# Calls `check` every second until it succeeds: within `seconds`, or the stack gives up
# naming `what`. `check` may die itself (a process that exited).
await() {
  local seconds=$1 what=$2 i; shift 2
  for i in $(seq 1 "$seconds"); do "$@" && return; sleep 1; done
  die "$what within $seconds s"
}

kafka_answers() {  # bootstrap servers: a real client (the broker's API versions) gets an answer
  kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$1" 2>/dev/null
}

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
    kafka_format "$KAFKA_DIR" "$(kafka_java kafka.tools.StorageTool random-uuid)"
  fi
  say "starting Kafka on 127.0.0.1:$KAFKA_PORT (log: $KAFKA_DIR/logs/server.log)"
  kafka_start "$KAFKA_DIR" "-Xms512m -Xmx1g"
  await 120 "Kafka did not answer on 127.0.0.1:$KAFKA_PORT; see $KAFKA_DIR/logs/server.log" kafka_single_answers
  say "kafka ready on 127.0.0.1:$KAFKA_PORT (SASL_SSL on 127.0.0.1:$SECURE_PORT)"
  scram_users
}

kafka_single_answers() {
  kafka_pid >/dev/null || die "Kafka exited during start; see $KAFKA_DIR/logs/server.log and $KAFKA_DIR/logs/stdout.log"
  port_open "$KAFKA_PORT" && kafka_answers "127.0.0.1:$KAFKA_PORT" >/dev/null
}

kafka_down() { process_stop "$KAFKA_DIR/kafka.pid" kafka; }

process_stop() {  # pid file, name: SIGTERM (a Kafka node shuts down in a controlled way), SIGKILL after 60 s
  local pid
  if pid=$(pid_in "$1"); then
    say "stopping $2 (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  fi
  rm -f "$1"
}

process_kill() {  # pid file, name: SIGKILL, as a crash does
  local pid
  pid=$(pid_in "$1") || die "$2 is not running"
  kill -9 "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  rm -f "$1"
  say "$2 (pid $pid) killed (SIGKILL)"
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
  case "$1" in
    clean) kafka_down ;;
    hard) process_kill "$KAFKA_DIR/kafka.pid" kafka ;;
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

# A cluster of the stack's (the primary, or the failover standby) started on its port; each
# has its own data directory, which is also its Unix socket directory.
pg_start() {  # data directory, port, what
  local bin; bin=$(pg_bin) || die "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set SLIPGUARD_PG_BIN"
  say "starting $3 on 127.0.0.1:$2 (log: $1/server.log)"
  as_pg "$bin/pg_ctl" -D "$1" -l "$1/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $2 -k $1 -c max_connections=200 -c fsync=on -c ssl=on" start >/dev/null \
    || die "$3 did not start; see $1/server.log"
}

# One statement as the superuser, through the cluster's Unix socket; prints the rows.
pg_sql() {  # data directory, port, sql
  local bin; bin=$(pg_bin) || return 1
  as_pg "$bin/psql" -h "$1" -p "$2" -U slipguard -d postgres -Atqc "$3"
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
  pg_start "$data" "$PG_PORT" PostgreSQL
  if ! pg_sql "$data" "$PG_PORT" "select 1 from pg_database where datname='slipguard'" | grep -q 1; then
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

# ---------------------------------------------------------------- PostgreSQL failover
# A streaming-replication standby of the stack's PostgreSQL, for the failover test
# (tests/integration/test_pg_failover.py): copied from the running primary with
# pg_basebackup (-R: it follows the primary through a replication slot, over TLS, as a role
# that may only replicate), started on its own port, then made synchronous: a commit
# returns only once the standby has it on disk. (With an asynchronous standby, a commit the
# writer was told of can be missing from the promoted standby, after the writer
# acknowledged its Kafka records: lost.) `pg-primary-kill` kills the postmaster and every
# process it started at once (SIGKILL: a machine lost), `pg-promote` makes the
# standby the primary (pg_ctl promote), and `pg-failover-reset` puts the stack back as
# `up` left it: the standby gone, the primary running (after crash recovery, if it was
# killed; promoted, if it was left a standby by a failback cut short), no synchronous standby
# required, no slot holding WAL. The reset keeps what the stack's own data directory holds:
# rows committed on the promoted standby alone are lost with it.
#
# `pg-failback` (after `pg-primary-kill` and `pg-promote`: the standby's data directory the
# primary on PG_STANDBY_PORT, the stack's own dead) puts the stack back as `pg-standby-up`
# leaves it without losing a committed row, by a clean switchover; the old primary, which
# may lack the last commits (and may hold some the standby never had), is never started
# again. Its data directory is copied anew from the promoted node (pg_basebackup, into a
# directory beside it, swapped in once whole; --no-sync as for the standby: the faults kill
# processes, not the machine) and started on PG_PORT as the promoted node's standby, made
# synchronous. The promoted node is then stopped cleanly (pg_ctl -m fast): its
# WAL sender sends all WAL, the shutdown checkpoint included, and exits only once the
# standby has flushed it (walsender.c); a commit acknowledged earlier was on the standby
# already (synchronous). Checked, not trusted: the promoted node must say "shut down" and
# the copy must have replayed past its last checkpoint, or the copy is not promoted. Then the
# copy is promoted (a new timeline), and a fresh standby made as `pg-standby-up` does.
# Clients naming both ports (target_session_attrs=read-write) find no writable primary for
# a few seconds. A failback cut short is taken up again where it stopped.
PG_STANDBY_PORT=${SLIPGUARD_PG_STANDBY_PORT:-$((PG_PORT + 1))}
PG_REPLICATOR=slipguard_replicator
PG_SLOT=slipguard_standby  # the slot's name, and the standby's application_name

pg_standby_dir() { echo "$(pg_data_dir)-standby"; }

pg_running() { [ -f "$1/postmaster.pid" ] && kill -0 "$(head -1 "$1/postmaster.pid")" 2>/dev/null; }

# Its connection to the primary; the password is kept under .stack/secrets, as the Kafka users' are.
pg_replication_conninfo() {
  local pwfile=$SECRETS/pg-$PG_REPLICATOR.password
  mkdir -p "$SECRETS"; chmod 700 "$SECRETS"
  [ -s "$pwfile" ] || { openssl rand -hex 16 | tr -d '\n' >"$pwfile"; chmod 600 "$pwfile"; }
  echo "host=127.0.0.1 port=$PG_PORT user=$PG_REPLICATOR password=$(cat "$pwfile") application_name=$PG_SLOT" \
    "sslmode=verify-full sslrootcert=$TLS_DIR/ca.pem"
}

# synchronous_standby_names on the primary (empty: none), applied at once.
pg_synchronous() {  # data directory, port, names
  pg_sql "$1" "$2" "ALTER SYSTEM SET synchronous_standby_names = '$3'" >/dev/null
  pg_sql "$1" "$2" "SELECT pg_reload_conf()" >/dev/null
}

pg_wait_sql() {  # data directory, port, sql, expected output, what
  for _ in $(seq 1 120); do [ "$(pg_sql "$1" "$2" "$3" 2>/dev/null)" = "$4" ] && return; sleep 0.5; done
  die "$5 not within 60 s; see $1/server.log"
}

# A copy made by pg_basebackup, before it starts: the lock files of the sockets its source
# kept in its data directory are copied too, and one naming the port the copy will listen
# on, with a process id in use again, would refuse the start.
pg_copied() { rm -f "$1"/.s.PGSQL.*.lock; }

# A fresh directory made a streaming copy of the node conninfo names, following it
# through the replication slot (-R -C -S), ready to start. (--no-sync: a test's copy, made
# in seconds rather than waiting for the disk; the faults kill processes, not the machine;
# the copy takes time with the size of the stack's database, which the tests' schemas grow.)
pg_copy_into() {  # directory, conninfo, what is copied
  local bin; bin=$(pg_bin) || die "PostgreSQL binaries not found"
  rm -rf "$1"; mkdir -p "$1"; chmod 700 "$1"
  [ "$(id -u)" = 0 ] && chown postgres: "$1"
  say "copying $3 into $1 (pg_basebackup, slot $PG_SLOT)"
  as_pg "$bin/pg_basebackup" -d "$2" -D "$1" -R -C -S "$PG_SLOT" -X stream -c fast --no-sync \
    >"$STACK/pg-basebackup.log" 2>&1 || die "pg_basebackup of $3 failed; see $STACK/pg-basebackup.log"
  pg_copied "$1"
}

pg_standby_up() {
  local bin data standby conninfo
  bin=$(pg_bin) || die "PostgreSQL binaries not found: apt-get install postgresql, or set SLIPGUARD_PG_BIN"
  pg_up
  data=$(pg_data_dir); standby=$(pg_standby_dir)
  pg_running "$data" || die "the standby is made from the stack's own PostgreSQL, which is not running here"
  if pg_running "$standby"; then say "standby already running on 127.0.0.1:$PG_STANDBY_PORT"; return; fi
  port_open "$PG_STANDBY_PORT" && die "port $PG_STANDBY_PORT is busy; stop that process or set SLIPGUARD_PG_STANDBY_PORT"
  [ "$(pg_sql "$data" "$PG_PORT" "SHOW wal_level")" != minimal ] \
    || die "the primary runs with wal_level=minimal: set wal_level=replica and restart it"
  conninfo=$(pg_replication_conninfo)
  # (A password on psql's command line for a moment: the local stack's own role.)
  pg_sql "$data" "$PG_PORT" "SELECT 1 FROM pg_roles WHERE rolname = '$PG_REPLICATOR'" | grep -q 1 \
    || pg_sql "$data" "$PG_PORT" "CREATE ROLE $PG_REPLICATOR REPLICATION LOGIN" >/dev/null
  pg_sql "$data" "$PG_PORT" "ALTER ROLE $PG_REPLICATOR PASSWORD '$(cat "$SECRETS/pg-$PG_REPLICATOR.password")'" >/dev/null
  # Left by a run that was not reset: the copy must not require a synchronous standby of its own
  # once promoted, and a slot left over would refuse -C.
  pg_synchronous "$data" "$PG_PORT" ""
  pg_sql "$data" "$PG_PORT" "SELECT pg_drop_replication_slot('$PG_SLOT') FROM pg_replication_slots
                             WHERE slot_name = '$PG_SLOT' AND NOT active" >/dev/null
  pg_copy_into "$standby" "$conninfo" "the primary"
  pg_start "$standby" "$PG_STANDBY_PORT" "the PostgreSQL standby"
  pg_wait_sql "$data" "$PG_PORT" "SELECT state FROM pg_stat_replication WHERE application_name = '$PG_SLOT'" \
    streaming "the standby streaming from the primary"
  pg_synchronous "$data" "$PG_PORT" "$PG_SLOT"
  pg_wait_sql "$data" "$PG_PORT" "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$PG_SLOT'" \
    sync "the standby synchronous"
  say "standby streaming (synchronous) on 127.0.0.1:$PG_STANDBY_PORT"
}

pg_primary_kill() {
  local data pid pids
  data=$(pg_data_dir)
  pg_running "$data" || die "the stack's PostgreSQL is not running"
  pid=$(head -1 "$data/postmaster.pid")
  # The postmaster and every process it started, at once: each backend leads a process group
  # of its own, and left alone it would exit only once it noticed the postmaster gone.
  pids="$pid $(ps -o pid= --ppid "$pid" | tr '\n' ' ')"
  kill -9 $pids 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 $pids 2>/dev/null || break; sleep 0.1; done
  say "primary PostgreSQL (pid $pid) and its $(($(echo $pids | wc -w) - 1)) processes killed (SIGKILL)"
}

pg_promote() {
  local bin standby
  bin=$(pg_bin) || die "PostgreSQL binaries not found"
  standby=$(pg_standby_dir)
  pg_running "$standby" || die "no standby is running: deploy/local/stack.sh pg-standby-up"
  as_pg "$bin/pg_ctl" -D "$standby" -w -t 60 promote >/dev/null || die "pg_ctl promote failed; see $standby/server.log"
  say "standby promoted: the primary is now 127.0.0.1:$PG_STANDBY_PORT"
}

pg_recovering() { [ "$(pg_sql "$1" "$2" "SELECT pg_is_in_recovery()" 2>/dev/null)" = t ]; }

pg_control() {  # data directory, field of pg_controldata
  local bin; bin=$(pg_bin) || return 1
  as_pg "$bin/pg_controldata" -D "$1" 2>/dev/null | sed -n "s/^$2: *//p"
}

pg_failback() {
  local bin data standby copy conninfo state checkpoint
  bin=$(pg_bin) || die "PostgreSQL binaries not found: apt-get install postgresql, or set SLIPGUARD_PG_BIN"
  data=$(pg_data_dir); standby=$(pg_standby_dir); copy=$(pg_data_dir).failback
  if pg_running "$data" && ! pg_recovering "$data" "$PG_PORT"; then
    pg_running "$standby" && ! pg_recovering "$standby" "$PG_STANDBY_PORT" \
      && die "both $data (127.0.0.1:$PG_PORT) and $standby (127.0.0.1:$PG_STANDBY_PORT) take writes: no failback; deploy/local/stack.sh pg-failover-reset"
    say "the primary runs on 127.0.0.1:$PG_PORT already: no failback"
    pg_standby_up
    return
  fi
  if pg_running "$standby"; then
    pg_recovering "$standby" "$PG_STANDBY_PORT" \
      && die "the standby on 127.0.0.1:$PG_STANDBY_PORT is not promoted (deploy/local/stack.sh pg-promote): no failback"
    if ! pg_running "$data"; then
      conninfo=$(pg_replication_conninfo | sed "s/ port=$PG_PORT / port=$PG_STANDBY_PORT /")
      [[ "$conninfo" == *" port=$PG_STANDBY_PORT "* ]] || die "the replication conninfo names no port $PG_PORT"
      # (A slot of an earlier attempt, cut short, would refuse -C.)
      pg_sql "$standby" "$PG_STANDBY_PORT" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                                           WHERE slot_name = '$PG_SLOT' AND NOT active" >/dev/null
      pg_copy_into "$copy" "$conninfo" "the promoted node (127.0.0.1:$PG_STANDBY_PORT)"
      install -m 600 "$TLS_DIR/postgres.key" "$copy/server.key"; install -m 644 "$TLS_DIR/postgres.pem" "$copy/server.crt"
      [ "$(id -u)" = 0 ] && chown postgres: "$copy/server.key" "$copy/server.crt"
      # The old primary's directory goes only once the copy is whole.
      rm -rf "$data.old"; mv "$data" "$data.old"; mv "$copy" "$data"; rm -rf "$data.old"
      pg_start "$data" "$PG_PORT" "the copy, a standby of 127.0.0.1:$PG_STANDBY_PORT"
    fi
    pg_wait_sql "$standby" "$PG_STANDBY_PORT" \
      "SELECT state FROM pg_stat_replication WHERE application_name = '$PG_SLOT'" streaming \
      "the copy streaming from the promoted node"
    pg_synchronous "$standby" "$PG_STANDBY_PORT" "$PG_SLOT"
    pg_wait_sql "$standby" "$PG_STANDBY_PORT" \
      "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$PG_SLOT'" sync "the copy synchronous"
    say "stopping the promoted node cleanly (its WAL sent to the copy first)"
    as_pg "$bin/pg_ctl" -D "$standby" -m fast -w -t 60 stop >/dev/null \
      || die "the promoted node did not stop within 60 s; see $standby/server.log"
  fi
  pg_running "$data" || die "no failover to undo: neither a promoted standby on 127.0.0.1:$PG_STANDBY_PORT nor a copy of it on $PG_PORT runs"
  state=$(pg_control "$standby" "Database cluster state")
  [ "$state" = "shut down" ] \
    || die "the promoted node ($standby) is not cleanly shut down (\"$state\"): its last commits may be missing from $data; not promoting it (pg-failover-reset starts afresh)"
  checkpoint=$(pg_control "$standby" "Latest checkpoint location")
  pg_wait_sql "$data" "$PG_PORT" "SELECT pg_last_wal_replay_lsn() > '$checkpoint'::pg_lsn" t \
    "the copy replaying the promoted node's WAL past its shutdown checkpoint ($checkpoint)"
  as_pg "$bin/pg_ctl" -D "$data" -w -t 60 promote >/dev/null || die "pg_ctl promote failed; see $data/server.log"
  pg_wait_sql "$data" "$PG_PORT" "SELECT pg_is_in_recovery()" f "the copy promoted"
  pg_synchronous "$data" "$PG_PORT" ""
  pg_sql "$data" "$PG_PORT" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" \
    >/dev/null
  say "failed back: the primary on 127.0.0.1:$PG_PORT again (replayed past $checkpoint); a fresh standby next"
  pg_standby_up
}

pg_standby_down() {
  local bin standby
  standby=$(pg_standby_dir); bin=$(pg_bin) || return 0
  if pg_running "$standby"; then
    say "stopping the postgres standby"
    as_pg "$bin/pg_ctl" -D "$standby" -m immediate -w stop >/dev/null || true
  fi
}

pg_failover_reset() {
  local data
  data=$(pg_data_dir)
  pg_standby_down
  rm -rf "$(pg_standby_dir)" "$data.failback" "$data.old"
  pg_up
  pg_running "$data" && [ "$(sed -n 4p "$data/postmaster.pid")" = "$PG_PORT" ] \
    || die "the PostgreSQL answering on 127.0.0.1:$PG_PORT is not this stack's ($data): stop it, or set SLIPGUARD_PG_PORT"
  if pg_recovering "$data" "$PG_PORT"; then  # (a copy left by a failback cut short: its upstream is gone)
    as_pg "$(pg_bin)/pg_ctl" -D "$data" -w -t 60 promote >/dev/null || die "pg_ctl promote failed; see $data/server.log"
    pg_wait_sql "$data" "$PG_PORT" "SELECT pg_is_in_recovery()" f "the stack's PostgreSQL promoted"
  fi
  pg_synchronous "$data" "$PG_PORT" ""
  pg_wait_sql "$data" "$PG_PORT" "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$PG_SLOT' AND active" 0 \
    "the standby's slot released"
  pg_sql "$data" "$PG_PORT" "SELECT pg_drop_replication_slot('$PG_SLOT') FROM pg_replication_slots
                             WHERE slot_name = '$PG_SLOT'" >/dev/null
  say "failover reset: no standby; the primary on 127.0.0.1:$PG_PORT, asynchronous, no slot"
}

# A broker that stops answering (a long GC pause, a network partition) without a restart:
# its connections stay open and nothing comes back until it is thawed.
kafka_signal() { process_signal "$KAFKA_DIR/kafka.pid" kafka "$@"; }

process_signal() {  # pid file, name, signal, what it does
  local pid
  pid=$(pid_in "$1") || die "$2 is not running"
  kill "-$3" "$pid"
  say "$2 (pid $pid): $4"
}

# ---------------------------------------------------------------- The three-broker cluster
# Three KRaft nodes (broker and controller each) with replication 3 and min.insync.replicas
# 2, and Toxiproxy between every client and every broker (tests/cluster). Replication and
# the quorum (INTERNAL, CONTROLLER listeners) do not go through the proxies.
#
# Per-client proxies, and why they hold: a broker answers Metadata and FindCoordinator with
# the endpoints of the listener the request arrived on (KIP-103), so every address a client
# ever learns (partition leaders, group and transaction coordinators) is an advertised
# address of the listener it bootstrapped on. Each broker has a client listener per proxy
# set: CLIENT (advertising the shared proxies, what every client uses by default) and SETk
# (advertising set k's proxies; Toxiproxy forwards set k's proxy of node i to node i's SETk
# listener). A client bootstrapped on set k's proxies therefore connects to set k's proxies
# only; disabling them closes its connections and refuses new ones, and no other client's
# connection is touched. Two sets: two clients (or groups of clients) cut off
# independently; another set is another listener on every node. (Not taken: per-client
# toxics on one proxy, which Toxiproxy does not have; rewriting addresses in the client,
# which librdkafka allows only from C, resolve_cb / connect_cb; a network namespace per
# worker, real too, but each with its own routes and rules to keep.)
#
# Ports, each base overridable (node i at base + i - 1):
CLUSTER_DIR=$STACK/cluster
CLUSTER_NODES="1 2 3"
CLUSTER_SETS="1 2"                                               # per-client proxy sets
CLUSTER_PORT=${SLIPGUARD_CLUSTER_PORT:-29092}                    # shared proxies: what clients bootstrap from
CLUSTER_SET_PORT=${SLIPGUARD_CLUSTER_SET_PORT:-29112}            # set k's proxies: + 10 (k - 1)
CLUSTER_LISTENER_PORT=${SLIPGUARD_CLUSTER_LISTENER_PORT:-29142}  # brokers' client listeners behind them: + 10 k
CLUSTER_INTERNAL_PORT=${SLIPGUARD_CLUSTER_INTERNAL_PORT:-29172}  # replication
CLUSTER_CONTROLLER_PORT=${SLIPGUARD_CLUSTER_CONTROLLER_PORT:-29182}
TOXIPROXY_PORT=${SLIPGUARD_TOXIPROXY_PORT:-29191}                # Toxiproxy's HTTP API
# Small heaps and few JVM threads: three nodes share two cores with the workers. C1 only
# (TieredStopAtLevel=1): a node restarted mid-test starts in about half the CPU time.
CLUSTER_JVM=${SLIPGUARD_CLUSTER_JVM:--Xms192m -Xmx384m -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1 -XX:TieredStopAtLevel=1}
TOXIPROXY_DIR=$CLUSTER_DIR/toxiproxy
TOXIPROXY_BIN=${SLIPGUARD_TOXIPROXY_BIN:-${SLIPGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slipguard}/k8s/bin/toxiproxy-server}

node_dir() { echo "$CLUSTER_DIR/node-$1"; }
node_pid() { pid_in "$(node_dir "$1")/kafka.pid"; }
proxy_port() { if [ "$1" = 0 ]; then echo $((CLUSTER_PORT + $2 - 1)); else echo $((CLUSTER_SET_PORT + 10 * ($1 - 1) + $2 - 1)); fi; }
proxy_name() { if [ "$1" = 0 ]; then echo "kafka-$2"; else echo "set$1-kafka-$2"; fi; }
listener_name() { if [ "$1" = 0 ]; then echo CLIENT; else echo "SET$1"; fi; }
set_bootstrap() { local i out=""; for i in $CLUSTER_NODES; do out+="${out:+,}127.0.0.1:$(proxy_port "$1" "$i")"; done; echo "$out"; }

cluster_ports() {  # every port the cluster binds
  local i k
  echo "$TOXIPROXY_PORT"
  for i in $CLUSTER_NODES; do
    echo $((CLUSTER_INTERNAL_PORT + i - 1)) $((CLUSTER_CONTROLLER_PORT + i - 1))
    for k in 0 $CLUSTER_SETS; do echo "$(proxy_port "$k" "$i")" $((CLUSTER_LISTENER_PORT + 10 * k + i - 1)); done
  done
}

node_properties() {
  local n=$1 i k voters="" listeners advertised protocols="CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT"
  for i in $CLUSTER_NODES; do voters+="${voters:+,}$i@127.0.0.1:$((CLUSTER_CONTROLLER_PORT + i - 1))"; done
  listeners="INTERNAL://127.0.0.1:$((CLUSTER_INTERNAL_PORT + n - 1)),CONTROLLER://127.0.0.1:$((CLUSTER_CONTROLLER_PORT + n - 1))"
  advertised="INTERNAL://127.0.0.1:$((CLUSTER_INTERNAL_PORT + n - 1))"
  for k in 0 $CLUSTER_SETS; do
    listeners+=",$(listener_name "$k")://127.0.0.1:$((CLUSTER_LISTENER_PORT + 10 * k + n - 1))"
    advertised+=",$(listener_name "$k")://127.0.0.1:$(proxy_port "$k" "$n")"
    protocols+=",$(listener_name "$k"):PLAINTEXT"
  done
  sed -e "s#@NODE@#$n#" -e "s#@DATA@#$(node_dir "$n")/data#" -e "s#@VOTERS@#$voters#" \
    -e "s#@LISTENERS@#$listeners#" -e "s#@ADVERTISED@#$advertised#" -e "s#@PROTOCOLS@#$protocols#" \
    "$ROOT/deploy/local/cluster.properties"
}

# What the tests read: where to bootstrap (shared and per set), Toxiproxy's API, the proxies.
cluster_description() {
  local i k sets="" proxies=""
  for k in $CLUSTER_SETS; do sets+="${sets:+, }\"$k\": \"$(set_bootstrap "$k")\""; done
  for i in $CLUSTER_NODES; do
    for k in 0 $CLUSTER_SETS; do proxies+="${proxies:+, }{\"node\": $i, \"set\": $k, \"name\": \"$(proxy_name "$k" "$i")\"}"; done
  done
  printf '{"bootstrap": "%s", "sets": {%s}, "toxiproxy": "http://127.0.0.1:%s", "proxies": [%s]}\n' \
    "$(set_bootstrap 0)" "$sets" "$TOXIPROXY_PORT" "$proxies"
}

toxiproxy_up() {
  if pid_in "$TOXIPROXY_DIR/toxiproxy.pid" >/dev/null; then return; fi
  [ -x "$TOXIPROXY_BIN" ] || bash "$ROOT/deploy/local/tools.sh" toxiproxy
  mkdir -p "$TOXIPROXY_DIR"
  local i k config=""
  for i in $CLUSTER_NODES; do
    for k in 0 $CLUSTER_SETS; do
      config+="${config:+,}{\"name\": \"$(proxy_name "$k" "$i")\", \"listen\": \"127.0.0.1:$(proxy_port "$k" "$i")\","
      config+=" \"upstream\": \"127.0.0.1:$((CLUSTER_LISTENER_PORT + 10 * k + i - 1))\", \"enabled\": true}"
    done
  done
  echo "[$config]" >"$TOXIPROXY_DIR/proxies.json"
  say "starting Toxiproxy (API on 127.0.0.1:$TOXIPROXY_PORT; log: $TOXIPROXY_DIR/toxiproxy.log)"
  LOG_LEVEL=warn nohup setsid "$TOXIPROXY_BIN" -host 127.0.0.1 -port "$TOXIPROXY_PORT" \
    -config "$TOXIPROXY_DIR/proxies.json" >"$TOXIPROXY_DIR/toxiproxy.log" 2>&1 &
  echo $! >"$TOXIPROXY_DIR/toxiproxy.pid"
  await 30 "Toxiproxy did not answer on 127.0.0.1:$TOXIPROXY_PORT; see $TOXIPROXY_DIR/toxiproxy.log" toxiproxy_answers
}

toxiproxy_answers() {
  pid_in "$TOXIPROXY_DIR/toxiproxy.pid" >/dev/null || die "Toxiproxy exited during start; see $TOXIPROXY_DIR/toxiproxy.log"
  port_open "$(proxy_port 0 3)" && "$(dirname "$TOXIPROXY_BIN")/toxiproxy-cli" -h "127.0.0.1:$TOXIPROXY_PORT" list >/dev/null 2>&1
}

node_start() {
  local n=$1 dir
  dir=$(node_dir "$n")
  if node_pid "$n" >/dev/null; then return; fi
  mkdir -p "$dir/logs"
  node_properties "$n" >"$dir/server.properties"
  if [ ! -f "$dir/data/meta.properties" ]; then
    [ -f "$CLUSTER_DIR/cluster.id" ] || kafka_java kafka.tools.StorageTool random-uuid >"$CLUSTER_DIR/cluster.id"
    kafka_format "$dir" "$(cat "$CLUSTER_DIR/cluster.id")"
  fi
  say "starting cluster node $n (client port $(proxy_port 0 "$n") through Toxiproxy; log: $dir/logs/server.log)"
  kafka_start "$dir" "$CLUSTER_JVM"
}

# The ids of the nodes that answer a real client through their shared proxies.
cluster_answering() {
  kafka_answers "$(set_bootstrap 0)" | sed -n 's/^[0-9.]*:[0-9]* (id: \([0-9]*\) rack: [^)]*) -> (.*/\1/p' | sort -u
}

nodes_answer() {  # node ids: each is running and answers
  local n
  for n in "$@"; do node_pid "$n" >/dev/null || die "cluster node $n exited; see $(node_dir "$n")/logs/server.log"; done
  # (A client's JVM costs seconds of CPU that a starting node needs: none before its port is open.)
  for n in "$@"; do port_open $((CLUSTER_LISTENER_PORT + n - 1)) || return 1; done
  local answering; answering=$(cluster_answering | tr '\n' ' ')
  for n in "$@"; do [[ " $answering " == *" $n "* ]] || return 1; done
}

cluster_up() {
  mkdir -p "$CLUSTER_DIR"
  local n port starting=""
  if ! pid_in "$TOXIPROXY_DIR/toxiproxy.pid" >/dev/null && ! node_pid 1 >/dev/null && ! node_pid 2 >/dev/null \
      && ! node_pid 3 >/dev/null; then
    for port in $(cluster_ports); do
      port_open "$port" && die "port $port is busy but not by this stack's cluster; stop that process or set the SLIPGUARD_CLUSTER_*_PORT and SLIPGUARD_TOXIPROXY_PORT variables (deploy/local/stack.sh)"
    done
  fi
  kafka_fetch
  toxiproxy_up
  for n in $CLUSTER_NODES; do node_pid "$n" >/dev/null || { node_start "$n"; starting+=" $n"; }; done
  cluster_description >"$CLUSTER_DIR/cluster.json"
  # (Formed once a majority of the voters has elected a leader; each node answers once it has caught up.)
  # shellcheck disable=SC2086
  await 180 "the cluster's nodes did not all answer; see $CLUSTER_DIR/node-*/logs/server.log" nodes_answer $CLUSTER_NODES
  say "cluster ready${starting:+ (started:$starting)}: bootstrap $(set_bootstrap 0); per-client sets$(for k in $CLUSTER_SETS; do printf ' %s: %s' "$k" "$(set_bootstrap "$k")"; done); Toxiproxy API 127.0.0.1:$TOXIPROXY_PORT ($CLUSTER_DIR/cluster.json)"
}

cluster_down() {
  local n
  for n in $CLUSTER_NODES; do process_stop "$(node_dir "$n")/kafka.pid" "cluster node $n" & done
  wait
  process_stop "$TOXIPROXY_DIR/toxiproxy.pid" toxiproxy
}

cluster_broker() {
  local action=$1 n=${2:-}
  [[ " $CLUSTER_NODES " == *" $n "* ]] || die "cluster-broker $action takes a node: one of $CLUSTER_NODES"
  local pidfile; pidfile=$(node_dir "$n")/kafka.pid
  case "$action" in
    kill) process_kill "$pidfile" "cluster node $n" ;;
    stop) process_stop "$pidfile" "cluster node $n" ;;
    start) node_start "$n"; await 180 "cluster node $n did not answer; see $(node_dir "$n")/logs/server.log" nodes_answer "$n"
           say "cluster node $n answers" ;;
    restart) cluster_broker stop "$n"; cluster_broker start "$n" ;;
    freeze) process_signal "$pidfile" "cluster node $n" STOP "frozen (SIGSTOP)" ;;
    thaw) process_signal "$pidfile" "cluster node $n" CONT "thawed (SIGCONT)" ;;
    *) die "cluster-broker takes kill, stop, start, restart, freeze or thaw, and a node" ;;
  esac
}

cluster_status() {
  local n
  for n in $CLUSTER_NODES; do
    if node_pid "$n" >/dev/null; then echo "cluster node $n: running (pid $(node_pid "$n")) 127.0.0.1:$(proxy_port 0 "$n") (proxied)"
    else echo "cluster node $n: stopped"; fi
  done
  if pid_in "$TOXIPROXY_DIR/toxiproxy.pid" >/dev/null; then echo "toxiproxy: running (pid $(pid_in "$TOXIPROXY_DIR/toxiproxy.pid")) API 127.0.0.1:$TOXIPROXY_PORT"
  else echo "toxiproxy: stopped"; fi
}

status() {
  if kafka_pid >/dev/null; then echo "kafka: running (pid $(kafka_pid)) 127.0.0.1:$KAFKA_PORT"; else echo "kafka: stopped"; fi
  if url_answers "${SLIPGUARD_DATABASE_URL:-$LOCAL_DB_URL}"; then echo "postgres: answering"; else echo "postgres: not answering"; fi
  if pg_running "$(pg_standby_dir)"; then echo "postgres standby: running 127.0.0.1:$PG_STANDBY_PORT"; fi
  if [ -d "$CLUSTER_DIR" ]; then cluster_status; fi
}

case "${1:-}" in
  up) kafka_up; pg_up ;;
  down) kafka_down; pg_down; pg_standby_down; cluster_down ;;
  status) status ;;
  kafka-up) kafka_up ;;
  kafka-down) kafka_down ;;
  kafka-freeze) kafka_signal STOP "frozen (SIGSTOP)" ;;
  kafka-thaw) kafka_signal CONT "thawed (SIGCONT)" ;;
  kafka-restart) kafka_restart "${2:-clean}" ;;
  pg-up) pg_up ;;
  pg-down) pg_stop_only ;;
  pg-standby-up) pg_standby_up ;;
  pg-primary-kill) pg_primary_kill ;;
  pg-promote) pg_promote ;;
  pg-failback) pg_failback ;;
  pg-failover-reset) pg_failover_reset ;;
  kafka-tool) shift; kafka_fetch; kafka_java "$@" ;;
  kafka3-fetch) kafka3_fetch ;;
  cluster-up) cluster_up ;;
  cluster-down) cluster_down ;;
  cluster-status) cluster_status ;;
  cluster-broker) cluster_broker "${2:-}" "${3:-}" ;;
  *) echo "usage: $0 up|down|status|pg-up|pg-down|pg-standby-up|pg-primary-kill|pg-promote|pg-failback|pg-failover-reset|kafka-up|kafka-down|kafka-freeze|kafka-thaw|kafka-restart [clean|hard|fresh]|kafka-tool CLASS ARGS|kafka3-fetch|cluster-up|cluster-down|cluster-status|cluster-broker kill|stop|start|restart|freeze|thaw N" >&2; exit 2 ;;
esac
