#!/bin/bash
# The kernel-matrix self-test inside a device image (installed as /usr/local/sbin/helix-matrix-check by
# scripts/device-image.sh; run by helix-matrix.service only when the kernel command line has helix.matrix=1).
#
# Checks the agent as systemd runs it from firmware-configs/systemd/helix-agent.service (Type=notify reached,
# watchdog pings, its user and capabilities), `helix doctor`, the probes on a curl -> nginx request and an MQTT v5
# publish carrying the traceparent helix.trace1 from the command line, then the spool across SIGKILL: with the uplink
# cut (a blackhole route to the host link), a request with helix.trace2 is spooled, the agent is killed with SIGKILL,
# systemd restarts it, the link comes back and the spool drains. Each finding is one line
# "HELIX-MATRIX key value..." on the virtio port helix.results (the console without one); the host
# (scripts/kernel-matrix.sh) checks that the spans of both traces reached its gateway. Powers the machine off at the end.
set -u
OUT=/dev/virtio-ports/helix.results
[ -w "$OUT" ] || OUT=/dev/console
UNIT=helix-agent.service
SPOOL=/var/lib/helix/spool
LINK=10.0.2.100/32  # the host link (scripts/kernel-matrix.sh's guest forwards)

say() { echo "HELIX-MATRIX $*" > "$OUT"; echo "HELIX-MATRIX $*"; }
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^helix\.$1=//p" | head -1; }
prop() { systemctl show -p "$1" --value "$UNIT"; }
wait_for() {  # SECONDS COMMAND...: true once COMMAND succeeds, false if it did not within SECONDS
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge "$end" ] && return 1; sleep 1; done
}
agent_active() { [ "$(prop ActiveState)" = active ]; }
spooled_files() { find "$SPOOL" -name '*.hxb' 2>/dev/null | sort; }
finish() { say end "$1"; sync; systemctl poweroff --no-block; exit 0; }

T1=$(arg trace1)
T2=$(arg trace2)
say begin kernel="$(uname -r)" arch="$(uname -m)" python="$(/opt/helix/bin/python -c 'import platform; print(platform.python_version())')"

# ---- the unit --------------------------------------------------------------------------------------------
if ! wait_for 900 agent_active; then
  say unit_failed state="$(prop ActiveState)/$(prop SubState)" result="$(prop Result)"
  journalctl -b -u "$UNIT" -o cat --no-pager | tail -40 | sed 's/^/HELIX-MATRIX agent_log /' > "$OUT"
  finish failed
fi
say uptime_at_check "$(cut -d' ' -f1 /proc/uptime)"
say agent_ready_us "$(prop ActiveEnterTimestampMonotonic)" exec_start_us="$(prop ExecMainStartTimestampMonotonic)"
PID=$(prop MainPID)
say unit type="$(prop Type)" state="$(prop ActiveState)/$(prop SubState)" watchdog_usec="$(prop WatchdogUSec)" \
  user="$(ps -o user= -p "$PID")" uid="$(awk '/^Uid:/ {print $3}' /proc/"$PID"/status)" \
  cap_eff="$(awk '/^CapEff:/ {print $2}' /proc/"$PID"/status)" cap_amb="$(awk '/^CapAmb:/ {print $2}' /proc/"$PID"/status)"
say status "$(prop StatusText)"
journalctl -b -u "$UNIT" -o cat --no-pager | grep -E "probes|bpf_loop|verifier|tracepoint missing|degraded|kernel probes" \
  | head -20 | sed 's/^/HELIX-MATRIX agent_log /' > "$OUT"

# A ping every WatchdogSec/2: the timestamp systemd keeps of the last one must move.
w0=$(prop WatchdogTimestampMonotonic)
pinged() { [ "$(prop WatchdogTimestampMonotonic)" != "$w0" ]; }
if wait_for 45 pinged; then
  say watchdog ok last_ping_us="$(prop WatchdogTimestampMonotonic)" previous_us="$w0"
else
  say watchdog no_ping_in_45s previous_us="$w0"
fi
say rss_idle_kib "$(awk '/^VmRSS:/ {print $2}' /proc/"$PID"/status)" pid="$PID"

/opt/helix/bin/helix doctor 2>&1 | sed 's/^/HELIX-MATRIX doctor /' > "$OUT"

# ---- kernel spans: an MQTT v5 publish and curl -> nginx in trace helix.trace1 ----------------------------------
# A device subscribed to its command topic, as in the field (QoS 1 without one ends in "no matching subscribers").
timeout 60 mosquitto_sub -h 127.0.0.1 -V 5 -q 1 -t plant/line1/valve -C 1 > /dev/null &
sleep 2
mosquitto_pub -h 127.0.0.1 -V 5 -q 1 -t plant/line1/valve -m open \
  -D PUBLISH user-property traceparent "00-$T1-00f067aa0ba902b8-01"
say mqtt_publish trace="$T1" rc=$?
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "traceparent: 00-$T1-00f067aa0ba902b7-01" http://127.0.0.1/)
say curl trace="$T1" status="$code"
# Stitching window, tail decision and the profile's batch age, then the uplink sends.
sleep 30
curl -s http://127.0.0.1:9464/metrics | grep -E "^helix_agent_(kernel|spans|dropped)" | grep -v " 0$" | head -40 \
  | sed 's/^/HELIX-MATRIX metrics /' > "$OUT"

# ---- the spool across SIGKILL --------------------------------------------------------------------------------
ip route add blackhole "$LINK"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "traceparent: 00-$T2-00f067aa0ba902b9-01" http://127.0.0.1/)
say curl trace="$T2" status="$code" uplink=cut
has_spool() { spooled_files | grep -q .; }
if ! wait_for 120 has_spool; then
  say spool none_after_120s
  ip route del blackhole "$LINK"
  finish failed
fi
sleep 12  # every span of the request cut into a batch (batch_max_age) before the kill
before=$(spooled_files)
spans_before=$(echo "$before" | sed -n 's/.*-\([0-9]*\)\.hxb$/\1/p' | awk '{n += $1} END {print n + 0}')
say spooled batches="$(echo "$before" | grep -c .)" spans="$spans_before"
old=$(prop MainPID)
restarts0=$(prop NRestarts)
kill -KILL "$old"
killed_at=$SECONDS
say killed pid="$old" signal=KILL
restarted() { local p; p=$(prop MainPID); [ "$p" != "$old" ] && [ "$p" != 0 ] && agent_active; }
if wait_for 300 restarted; then
  say restarted pid="$(prop MainPID)" nrestarts="$(prop NRestarts)" was="$restarts0" after_s="$((SECONDS - killed_at))"
else
  say restart_failed state="$(prop ActiveState)/$(prop SubState)"
fi
after=$(spooled_files)
kept=$(comm -12 <(echo "$before") <(echo "$after") | grep -c .)
say spool_after_restart kept="$kept" of="$(echo "$before" | grep -c .)"
ip route del blackhole "$LINK"
drained() { [ -z "$(comm -12 <(echo "$before") <(spooled_files))" ]; }
if wait_for 300 drained; then
  say spool_drained batches="$(echo "$before" | grep -c .)"
else
  say spool_not_drained left="$(comm -12 <(echo "$before") <(spooled_files) | grep -c .)"
fi
say unit_end nrestarts="$(prop NRestarts)" result="$(prop Result)" state="$(prop ActiveState)/$(prop SubState)"
journalctl -b -u "$UNIT" -o short-monotonic --no-pager | grep -v "^-- " | tail -80 | cut -c1-400 \
  | sed 's/^/HELIX-MATRIX journal /' > "$OUT"
sleep 8  # the gateway's export of the last batches
finish ok
