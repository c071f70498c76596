#!/bin/bash
# check.sh: self-contained demonstration of the Triad Kamailio payload,
# without the supervisor. Run as root (Debian 12: kamailio,
# kamailio-sqlite-modules, sip-tester, sipsak, sqlite3, iproute2).
#
#  0. network namespace with a veth pair: "VIP" 10.99.0.10/24 on tk0,
#     client 10.99.0.20/24 on tk1; ip_nonlocal_bind=1; Kamailio is started
#     BEFORE the VIP exists (as the supervisor may), then the VIP is added.
#  a. sipsak registers user "uas" with contact sip:uas@10.99.0.20:5070
#     through the VIP; the row is in SQLite right after the 200.
#  b. kill -9 of Kamailio's whole process group, restart; a call to "uas"
#     through the VIP reaches the SIPp UAS at the contact (location table
#     reloaded from SQLite); an unknown user still gets 404.
#  c. SIPp uac places CALLS calls (hold HOLD_MS) to "uas"; mid-run Kamailio's
#     group is killed -9 and restarted after DOWN_S; report how many calls
#     established before the kill got 200 to their BYE.
# Exit 0 only if every step passed. KEEP=1 keeps the work dir (logs).
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
CALLS=${CALLS:-20}
RATE=${RATE:-5}            # calls per second
HOLD_MS=${HOLD_MS:-3000}   # SIPp -d: hold time of each call
KILL_AFTER_S=${KILL_AFTER_S:-3.3}  # with the defaults, both INVITEs
                                    # and BYEs are sent into the gap
DOWN_S=${DOWN_S:-0.5}      # sleep between kill -9 and restart
KAM_USER=${KAM_USER:-kamailio}

NS=triadk$$
VIP=10.99.0.10
CLI=10.99.0.20
UAS_PORT=5070
UAC_PORT=5061
WORK=$(mktemp -d /tmp/triad-kam.XXXXXX)
MNT=$WORK/mnt              # stands for the replicated volume's mount point
RUN=$WORK/run              # Kamailio runtime dir (-Y)
KLOG=$WORK/kamailio.log
chmod 755 "$WORK"

# Every long-running process is started by spawn() as the leader of its
# own process group and is stopped by killing that group.
KAM_BG= KAM_PGID=   # Kamailio: background job pid, process group
UAS_BG= UAS_PGID=   # SIPp uas
UAC_BG= UAC_PGID=   # SIPp uac
FAILS=0

say()  { printf '%s\n' "$*"; }
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
nsx()  { ip netns exec "$NS" "$@"; }
now()  { date +%s.%N; }

# Live (non-zombie) processes of a process group.
group_alive() {
	ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { n++ } END { exit !(n > 0) }'
}

# spawn NAME OUT CMD...: run CMD in the namespace in a new session (so a
# new process group whose id is CMD's pid), stdout+stderr to OUT; sets
# NAME_BG (the background job, to wait for) and NAME_PGID.
spawn() {
	local name=$1 out=$2 pgf=$WORK/$1.pgid; shift 2
	rm -f "$pgf"
	nsx setsid sh -c 'echo $$ > "$0"; exec "$@"' "$pgf" "$@" >>"$out" 2>&1 &
	printf -v "${name}_BG" %s "$!"
	for _ in $(seq 400); do [ -s "$pgf" ] && break; sleep 0.005; done
	printf -v "${name}_PGID" %s "$(cat "$pgf" 2>/dev/null)"
	rm -f "$pgf"
}

# kill_group NAME: kill -9 the whole process group, wait until it is gone.
kill_group() {
	local bg_var=${1}_BG pg_var=${1}_PGID
	local bg=${!bg_var} pg=${!pg_var}
	if [ -n "$pg" ]; then
		kill -9 -- "-$pg" 2>/dev/null
		for _ in $(seq 200); do group_alive "$pg" || break; sleep 0.005; done
	fi
	[ -n "$bg" ] && wait "$bg" 2>/dev/null
	printf -v "$bg_var" %s ""; printf -v "$pg_var" %s ""
}
kill_kam() { kill_group KAM; }

cleanup() {
	trap - EXIT INT TERM
	kill_group KAM; kill_group UAC; kill_group UAS
	ip netns del "$NS" 2>/dev/null
	if [ "${KEEP:-0}" = 1 ]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# OPTIONS to the proxy itself; 0 when answered 200.
options_ok() {  # addr [timeout-ms]
	nsx sipsak -s "sip:$1" -H "$CLI" -D "${2:-1}" >/dev/null 2>&1
}

# Start Kamailio as the supervisor would: environment, foreground, own
# process group (setsid), drop to KAM_USER, runtime dir via -Y, no pid file.
start_kam() {  # t0 what
	local t0=$1
	spawn KAM "$KLOG" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		TRIAD_VIP="$VIP" TRIAD_MOUNT_POINT="$MNT" \
		kamailio -f "$HERE/kamailio.cfg" -DD -E -Y "$RUN" \
		-u "$KAM_USER" -g "$(id -gn "$KAM_USER")"
	[ -n "$KAM_PGID" ] || { say "kamailio: no process group"; return 1; }
	# ready = OPTIONS on loopback answered (as a supervisor health check)
	for _ in $(seq 100); do
		if options_ok 127.0.0.1 1; then
			say "kamailio up (pgid $KAM_PGID), OPTIONS 200 $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }') s after $2"
			return 0
		fi
		kill -0 "$KAM_BG" 2>/dev/null || break
		sleep 0.02
	done
	say "kamailio did not start; log tail:"; tail -20 "$KLOG"
	return 1
}

as_kam_sql() { runuser -u "$KAM_USER" -- sqlite3 "$MNT/kamailio.db" "$1"; }

# ------------------------------------------------------------------ setup
say "== setup: namespace $NS, work dir $WORK"
ip netns add "$NS" || exit 1
nsx ip link set lo up
nsx ip link add tk0 type veth peer name tk1
nsx ip link set tk0 up
nsx ip link set tk1 up
nsx ip addr add "$CLI/24" dev tk1
nsx sysctl -qw net.ipv4.ip_nonlocal_bind=1
mkdir -p "$RUN"
chown "$KAM_USER:" "$RUN"
"$HERE/make-db.sh" "$MNT" "$KAM_USER" || { fail "make-db.sh"; exit 1; }

say "== start kamailio before the VIP exists (ip_nonlocal_bind=1)"
start_kam "$(now)" "start" || { fail "kamailio start"; exit 1; }
nsx ip addr add "$VIP/24" dev tk0
for _ in $(seq 50); do options_ok "$VIP" 1 && break; sleep 0.02; done
if options_ok "$VIP" 1; then pass "OPTIONS to the VIP answered 200 after adding the VIP"; else fail "OPTIONS to VIP"; fi

# ------------------------------------------------------------------ (a)
say "== (a) sipsak registers uas -> sip:uas@$CLI:$UAS_PORT through the VIP"
if nsx sipsak -U -C "sip:uas@$CLI:$UAS_PORT" -s "sip:uas@$VIP" -H "$CLI" -x 3600 -i -vv >"$WORK/sipsak-reg.log" 2>&1 \
	&& grep -q "registering user uas.*OK" "$WORK/sipsak-reg.log"; then
	pass "REGISTER answered 200"
else
	fail "REGISTER"; cat "$WORK/sipsak-reg.log"
fi
row=$(as_kam_sql "SELECT username, contact FROM location;")
say "SQLite location rows: $row"
case $row in *"uas|sip:uas@$CLI:$UAS_PORT"*) pass "registration is in SQLite";; *) fail "registration not in SQLite";; esac

# ------------------------------------------------------------------ (b)
say "== (b) kill -9 kamailio's process group, restart, route to the contact"
spawn UAS "$WORK/uas.out" sipp -sf "$HERE/uas.xml" -i "$CLI" -p "$UAS_PORT" -s uas -nostdin \
	-trace_err -error_file "$WORK/uas-errors.log" \
	-trace_msg -message_file "$WORK/uas-msg.log"
t0=$(now)
kill_kam
start_kam "$t0" "the kill" || { fail "kamailio restart"; exit 1; }
if nsx sipp "$VIP:5060" -sf "$HERE/uac.xml" -s uas -i "$CLI" -p "$UAC_PORT" \
	-m 1 -d 0 -nostdin -timeout 15s -timeout_error \
	-trace_msg -message_file "$WORK/uac-b-msg.log" >"$WORK/uac-b.out" 2>&1; then
	pass "call to uas through the VIP after restart: routed to the contact, BYE 200"
else
	fail "call to uas after restart (sipp exit $?)"; tail -20 "$WORK/uac-b.out"
fi
nsx sipsak -s "sip:nobody@$VIP" -H "$CLI" -vv >"$WORK/sipsak-404.log" 2>&1
if grep -q "404 Not Found" "$WORK/sipsak-404.log"; then pass "unknown user -> 404"; else fail "unknown user not 404"; fi

# ------------------------------------------------------------------ (c)
say "== (c) $CALLS calls at $RATE/s, hold ${HOLD_MS} ms; kill -9 at ${KILL_AFTER_S} s, restart after ${DOWN_S} s"
cd "$WORK" || exit 1
spawn UAC "$WORK/uac-c.out" sipp "$VIP:5060" -sf "$HERE/uac.xml" -s uas -i "$CLI" -p "$UAC_PORT" \
	-m "$CALLS" -r "$RATE" -d "$HOLD_MS" -nostdin -timeout 90s \
	-trace_logs -log_file "$WORK/uac-c.log" \
	-trace_stat -stf "$WORK/uac-c-stat.csv" -fd 1 \
	-trace_err -error_file "$WORK/uac-c-errors.log"
sleep "$KILL_AFTER_S"
t_kill=$(now)
kill_kam
sleep "$DOWN_S"
start_kam "$t_kill" "the kill" || { fail "kamailio restart mid-run"; exit 1; }
wait "$UAC_BG"; uac_rc=$?; UAC_BG= UAC_PGID=
cd - >/dev/null || exit 1

# Per-call outcome from the <log> lines of uac.xml.
read -r est_before est_ok est_total bye_total < <(awk -v tk="$t_kill" '
	$1 == "EST"   { est[$2] = $3 }
	$1 == "BYEOK" { bye[$2] = 1 }
	END {
		for (c in est) { n++; if (est[c] + 0 < tk + 0) { b++; if (c in bye) ok++ } }
		for (c in bye) m++
		printf "%d %d %d %d\n", b, ok, n, m
	}' "$WORK/uac-c.log")
succ=$(grep -m1 "Successful call" "$WORK/uac-c.out" | awk '{print $(NF-0)}')
failc=$(grep -m1 "Failed call" "$WORK/uac-c.out" | awk '{print $(NF-0)}')
say "SIPp exit $uac_rc; statistics: successful $succ, failed $failc (of $CALLS)"
inv_rt=$(grep "INVITE ---------->" "$WORK/uac-c.out" | tail -1 | awk '{print $4}')
bye_rt=$(grep "BYE ---------->" "$WORK/uac-c.out" | tail -1 | awk '{print $4}')
say "retransmissions by the caller (sent into the gap): INVITE $inv_rt, BYE $bye_rt"
say "calls established before the kill: $est_before; of these, BYE answered 200: $est_ok"
say "all calls: established $est_total, BYE answered 200 $bye_total"
if [ "$est_before" -gt 0 ] && [ "$est_ok" -eq "$est_before" ]; then
	pass "every call established before the kill ended with 200 to its BYE ($est_ok/$est_before)"
else
	fail "calls established before the kill: $est_ok/$est_before BYE 200"
fi
if [ "$uac_rc" -eq 0 ] && [ "$bye_total" -eq "$CALLS" ]; then
	pass "all $CALLS calls successful (SIPp exit 0)"
else
	fail "not all calls successful (exit $uac_rc, $bye_total/$CALLS)"
fi
if grep -qE "ERROR|CRITICAL" "$KLOG"; then
	say "note: kamailio logged errors:"; grep -E "ERROR|CRITICAL" "$KLOG" | sort | uniq -c | head
fi

say "== result: $([ $FAILS -eq 0 ] && echo PASS || echo "FAIL ($FAILS)")"
[ "$FAILS" -eq 0 ]
