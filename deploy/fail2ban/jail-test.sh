#!/usr/bin/env bash
# Checks that fail2ban loads the jails in jail.d/ with the filters in filter.d/ (both jails
# enabled for the check), on top of the system's own fail2ban configuration: every jail
# starts, with its journal match and port. The filters' matches are checked against real
# controller logs by tests/tests/fail2ban.rs. Needs fail2ban (fail2ban-client).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
cp -r /etc/fail2ban/. "$conf/"
# Only these jails: the system's (sshd without a log here, say) are not ours to check.
rm -f "$conf"/jail.d/* "$conf"/jail.local
cp "$here"/filter.d/*.conf "$conf/filter.d/"
sed 's/^enabled  *= *false/enabled  = true/' "$here/jail.d/pifleet.conf" >"$conf/jail.d/pifleet.conf"
printf '[sshd]\nenabled = false\n' >"$conf/jail.d/00-no-sshd.conf"
out=$(fail2ban-client -c "$conf" --test 2>&1 && fail2ban-client -c "$conf" -d 2>&1) || {
  echo "$out" >&2
  echo "fail2ban refuses deploy/fail2ban/" >&2
  exit 1
}
status=0
for jail in pifleet pifleet-mqtt; do
  for want in "['start', '$jail']" "['set', '$jail', 'addjournalmatch', '_SYSTEMD_UNIT=pifleet-controller.service']"; do
    grep -qF "$want" <<<"$out" || { echo "fail2ban config: missing $want" >&2; status=1; }
  done
done
grep -qF "['port', '8443']" <<<"$out" || { echo "fail2ban config: jail pifleet not on 8443" >&2; status=1; }
grep -qF "['port', '8883']" <<<"$out" || { echo "fail2ban config: jail pifleet-mqtt not on 8883" >&2; status=1; }
if grep -E "ERROR|WARNING" <<<"$out" | grep -v "'allowipv6' not defined"; then
  echo "fail2ban config: warnings above" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "fail2ban jails load: pifleet (8443), pifleet-mqtt (8883)"
exit "$status"
