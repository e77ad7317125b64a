#!/usr/bin/env bash
# Loads pifleet.nft into a throwaway network namespace and checks what it lets through:
# 8883 from anywhere, 8443 only from an admin-allowlisted address (IPv4 and IPv6), every
# other port dropped. Traffic stays between namespaces made here (addresses from
# 10.231.0.0/16 and fd00:231::/32, which exist only inside them); they are removed on exit.
# Needs root (ip netns, nft), iproute2, nftables and python3.
# Usage: deploy/nftables/netns-test.sh [ruleset]   (default: the pifleet.nft beside it)
set -euo pipefail
ruleset=${1:-"$(dirname "$0")/pifleet.nft"}

srv=pf-srv-$$ adm=pf-adm-$$ oth=pf-oth-$$
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  for ns in "$srv" "$adm" "$oth"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

for ns in "$srv" "$adm" "$oth"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
# One veth pair from the server to each client: 10.231.N.1 / fd00:231:N::1 on the server
# side, .2 / ::2 on the client's.
n=0
for ns in "$adm" "$oth"; do
  n=$((n + 1))
  ip link add "pfs$n-$$" netns "$srv" type veth peer name "pfc$n-$$" netns "$ns"
  ip -n "$srv" addr add "10.231.$n.1/24" dev "pfs$n-$$"
  ip -n "$srv" addr add "fd00:231:$n::1/64" dev "pfs$n-$$" nodad
  ip -n "$ns" addr add "10.231.$n.2/24" dev "pfc$n-$$"
  ip -n "$ns" addr add "fd00:231:$n::2/64" dev "pfc$n-$$" nodad
  ip -n "$srv" link set "pfs$n-$$" up
  ip -n "$ns" link set "pfc$n-$$" up
done

# Listeners on the server: the two pifleet ports, SSH's and another (node_exporter's).
ports="8883 8443 22 9100"
ready=$(mktemp)
ip netns exec "$srv" python3 - "$ready" $ports <<'PY' &
import socket, sys, threading
socks = []
for port in map(int, sys.argv[2:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(16)
    socks.append(s)
def serve(s):
    while True:
        c, _ = s.accept()
        c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
open(sys.argv[1], "w").write("ready\n")
threading.Event().wait()
PY
pid=$!
for _ in $(seq 100); do [ -s "$ready" ] && break; sleep 0.05; done
rm -f "$ready"

# open | refused | dropped (no answer within a second)
probe() {
  ip netns exec "$1" python3 -c '
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("dropped")
' "$2" "$3"
}
failed=0
expect() { # namespace-name address port want
  local got
  got=$(probe "$2" "$3" "$4")
  if [ "$got" = "$5" ]; then
    echo "ok: $1 -> [$3]:$4 $got"
  else
    echo "FAIL: $1 -> [$3]:$4 is $got, want $5" >&2
    failed=1
  fi
}

# Without the ruleset every port answers: what is dropped later is the ruleset's doing.
for p in $ports; do expect other "$oth" 10.231.2.1 "$p" open; done

ip netns exec "$srv" nft -f "$ruleset"
# The example's sets hold documentation addresses: allow the admin client instead, and no
# device networks or scrapers, as an operator adapts them.
ip netns exec "$srv" nft -f - <<'NFT'
flush set inet pifleet admin_v4
flush set inet pifleet admin_v6
flush set inet pifleet fleet_v4
flush set inet pifleet fleet_v6
flush set inet pifleet scrapers_v4
flush set inet pifleet scrapers_v6
add element inet pifleet admin_v4 { 10.231.1.2 }
add element inet pifleet admin_v6 { fd00:231:1::2 }
NFT

for addr in 10.231.1.1 fd00:231:1::1; do
  expect admin "$adm" "$addr" 8883 open
  expect admin "$adm" "$addr" 8443 open
  expect admin "$adm" "$addr" 22 dropped
  expect admin "$adm" "$addr" 9100 dropped
done
for addr in 10.231.2.1 fd00:231:2::1; do
  expect other "$oth" "$addr" 8883 open
  expect other "$oth" "$addr" 8443 dropped
  expect other "$oth" "$addr" 22 dropped
  expect other "$oth" "$addr" 9100 dropped
done
# The server's own loopback is not filtered.
expect server "$srv" 127.0.0.1 9100 open

[ "$failed" -eq 0 ] || { echo "the nftables example does not do what it says" >&2; exit 1; }
echo "nftables example: 8883 open, 8443 only from the allowlist, the rest dropped"
