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
