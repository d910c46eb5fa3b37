// Package redirect programs the pod's traffic interception: nftables NAT rules, written over
// netlink (github.com/google/nftables; no nft or iptables binary), that send the
// application's outbound TCP to the sidecar's outbound listener (15001) and the pod's inbound
// TCP to its inbound listener (15006); and it recovers the address a redirected connection was
// really meant for (OriginalDestination, SO_ORIGINAL_DST).
//
// One description of the ruleset (Rules.chains) feeds both Render, which prints it as
// `nft list ruleset` does (for `trellis-proxy init --dry-run` and the golden files in
// testdata), and Apply, which compiles the same description to netlink expressions.
//
// # The ruleset
//
// The rules live in a table of their own, "trellis", which Apply deletes and recreates in one
// netlink batch: the kernel applies a batch atomically, so there is never a moment without
// rules, and a refused batch leaves the previous rules in place. For DefaultRules:
//
//	table inet trellis {
//		chain prerouting {
//			type nat hook prerouting priority dstnat; policy accept;
//			iifname "lo" return
//			meta l4proto != tcp return
//			goto inbound
//		}
//
//		chain output {
//			type nat hook output priority -100; policy accept;
//			meta l4proto != tcp return
//			ip daddr 127.0.0.0/8 return
//			ip6 daddr ::1 return
//			oifname "lo" meta skuid 1337 goto inbound
//			oifname "lo" return
//			meta skuid 1337 return
//			meta l4proto tcp redirect to :15001
//		}
//
//		chain inbound {
//			tcp dport 15000 return
//			tcp dport 15001 return
//			tcp dport 15006 return
//			tcp dport 15020 return
//			tcp dport 15021 return
//			meta l4proto tcp redirect to :15006
//		}
//	}
//
// Excluded outbound ports and networks are "return" rules just before the outbound redirect,
// excluded inbound ports are "return" rules at the top of the inbound chain. One rule per
// item, no sets: the lists are short, and the ruleset stays readable in `nft list ruleset`.
//
// # Table family
//
// One inet table serves IPv4 and IPv6 with one set of chains. NAT chains in inet tables need
// Linux 5.2; on an older kernel, which refuses the inet NAT chain, Apply falls back to an "ip"
// and an "ip6" table with the same chains, each holding only the rules of its IP version. The
// fallback is tested here by programming it directly (the test kernel supports inet).
//
// # Traffic to the pod's own IP (hairpin)
//
// A connection from a process in the pod to the pod's own IP is routed over lo, so the output
// chain sees oifname "lo" for it. Two cases, decided in this order:
//
//   - The proxy (ProxyUID) dialling the pod's own IP goes to the inbound chain, exactly like a
//     connection arriving from another pod: it is redirected to the inbound listener unless
//     its port is an excluded inbound port or a proxy port. This lets the outbound side pick
//     its own pod as an endpoint and talk mTLS to it without a special case. It is also why
//     the inbound side must hand connections to the application on loopback (127.0.0.1 or
//     ::1): loopback destinations return before this rule, so delivery to the app cannot
//     loop. If the inbound side dialled the pod IP instead, it would be captured again,
//     forever. (Istio's answer to applications that listen only on the pod IP is to dial it
//     from source 127.0.0.6 and exempt that source; add such a rule if Trellis ever needs it.)
//   - Anyone else (the application) talking to the pod's own IP over lo goes straight to the
//     destination, as loopback traffic does: an application calling itself is not mesh
//     traffic, and redirecting it to the outbound listener would only send it back in.
//
// # What the proxy's listeners see
//
// nftables "redirect" rewrites the destination to an address of the host, and conntrack keeps
// the original:
//
//   - Outbound connections (output hook) are redirected to 127.0.0.1 or ::1: the outbound
//     listener must listen on loopback or a wildcard address of each IP version, and sees its
//     local address as loopback while the peer address is the pod's.
//   - Inbound connections (prerouting hook) are redirected to the first address of the
//     interface they came in on, not to loopback: the inbound listener must listen on a
//     wildcard address.
//   - OriginalDestination must ask conntrack in the connection's IP version. An IPv4
//     connection accepted on a dual-stack [::] socket (Go's default for ":15001") is IPv4 to
//     conntrack although the socket is IPv6; it is answered through SOL_IP.
//   - A connection that reached a capture listener without being redirected (someone dialled
//     15006 directly) has itself as original destination: the proxy must refuse a connection
//     whose original destination is its own listener, or it would dial itself.
//
// Only TCP is touched. UDP, including DNS, passes untouched.
package redirect
