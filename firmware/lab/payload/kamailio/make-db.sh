#!/bin/sh
# make-db.sh DIR USER
# Creates DIR/kamailio.db (Kamailio 5.6 usrloc schema, WAL mode) from
# schema.sql next to this script, owned by USER (the user Kamailio runs
# as: if the files belong to anyone else, every REGISTER gets a 500).
# DIR itself is made writable by USER too, because SQLite in WAL mode
# creates kamailio.db-wal and kamailio.db-shm next to the database.
# An existing database is kept (never overwritten); only ownership is fixed.
set -eu
if [ $# -ne 2 ]; then
	echo "usage: $0 DIR USER" >&2
	exit 2
fi
dir=$1
user=$2
here=$(cd "$(dirname "$0")" && pwd)
schema=$here/schema.sql
db=$dir/kamailio.db
group=$(id -gn "$user")

mkdir -p "$dir"
if [ ! -e "$db" ]; then
	tmp=$dir/.kamailio.db.tmp.$$
	rm -f "$tmp" "$tmp-wal" "$tmp-shm"
	sqlite3 -bail "$tmp" < "$schema" > /dev/null
	# The supervisor's test user (pbx.probe_user): a permanent location
	# whose contact is the supervisor's own responder on loopback. Kamailio
	# loads it with every other registration, so a probe routed to it
	# proves the registrations are loaded, not only that OPTIONS is
	# answered. Stored as Kamailio stores times (julian days).
	sqlite3 -bail "$tmp" "INSERT INTO location (ruid, username, contact, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, connection_id) VALUES ('triad-probe-0', 'triad-probe', 'sip:triad-probe@127.0.0.1:5099', julianday('2099-01-01'), -1.0, 'triad-probe', 1, julianday('2026-01-01'), 0, 0, 'triad', -1);"
	# Check the result before publishing it.
	v=$(sqlite3 "$tmp" "SELECT table_version FROM version WHERE table_name='location';")
	m=$(sqlite3 "$tmp" "PRAGMA journal_mode;")
	if [ "$v" != 9 ] || [ "$m" != wal ]; then
		echo "make-db.sh: bad result (location version '$v', journal '$m')" >&2
		rm -f "$tmp" "$tmp-wal" "$tmp-shm"
		exit 1
	fi
	chown "$user:$group" "$tmp"
	chmod 0640 "$tmp"
	mv "$tmp" "$db"
	sync "$db" 2>/dev/null || sync
	echo "make-db.sh: created $db"
else
	echo "make-db.sh: keeping existing $db"
fi
chown "$user:$group" "$dir"
for f in "$db" "$db-wal" "$db-shm"; do
	if [ -e "$f" ]; then chown "$user:$group" "$f"; fi
done
