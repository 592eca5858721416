// Package netns builds small virtual networks on one Linux machine so that
// drawbridge tests can run several "hosts" side by side and break the network
// between them: cut a host's cable, partition two hosts, flap a link, add
// delay or loss, move a secondary (floating) address, and measure the outage
// a client sees.
//
// # Topology
//
// A [Lab] is one layer-2 segment. It owns a "switch" network namespace that
// holds a Linux bridge (br0) and one port per host. Every [Host] is a network
// namespace of its own with a single interface, eth0, whose veth peer is a
// port of that bridge:
//
//	        lab switch netns  <lab>-sw
//	      ┌────────────── br0 ──────────────┐
//	      h1                h2               h3        (bridge ports)
//	      │                 │                │         (veth pairs)
//	eth0 10.x.y.1     eth0 10.x.y.2    eth0 10.x.y.3
//	netns <lab>-a     netns <lab>-b    netns <lab>-c
//
// The bridge lives in the lab's own namespace rather than in the root one, so
// a lab changes nothing in the machine's own network stack: no links, no
// addresses, no firewall rules, no sysctls. The root firewall (for example a
// FORWARD policy of DROP together with br_netfilter) cannot interfere with
// lab traffic either. Host namespaces only have the connected route of the
// lab subnet and no default route, so lab traffic cannot leave the lab. The
// one exception is [Lab.HostSide], which a test calls explicitly to put one
// address of the lab subnet on a veth in the root namespace.
//
// # Names and leftovers
//
// Every lab has a short unique name, [Prefix] plus six random hex digits
// (for example "dbnl3fa29c"). Namespaces are called "<lab>-sw" and
// "<lab>-<host>"; the only root-namespace link a lab may create is
// "<lab>rt" (12 characters, below the 15-character limit). Names inside the
// lab's namespaces (br0, h1, eth0, ...) cannot clash with anything outside.
// A lab records its owner (pid and process start time) in
// /run/drawbridge-netns/<lab>; [Cleanup] removes the labs whose owner is gone,
// so a TestMain can clear the leftovers of a crashed run without touching the
// live labs of test binaries running in parallel (go test ./... runs packages
// concurrently).
//
// # Faults
//
//   - [Host.Cut] / [Host.Heal] take the bridge side of the host's cable down
//     and up: the host sees NO-CARRIER, everyone else sees silence.
//   - [Host.Block] drops every frame between two hosts (ebtables in the
//     switch namespace, matched on the hosts' MAC addresses, both directions),
//     including traffic to secondary addresses; both stay reachable for others.
//   - [Host.Netem] delays or drops the host's outgoing traffic with tc netem
//     when the kernel has sch_netem; otherwise a small userspace relay (two TAP
//     devices in the switch namespace) emulates delay, jitter and loss.
//   - [Host.Flap] cuts and heals a link periodically in the background.
//
// # Sockets inside a namespace
//
// [Host.DialContext], [Host.Listen] and [Host.ListenPacket] open sockets in a
// host's namespace from the test process itself: a goroutine locks its OS
// thread, setns(2)-es the thread into the namespace, creates the socket and
// exits without unlocking, so the Go runtime throws the thread away instead
// of reusing it. A socket keeps the namespace it was created in for its whole
// life, whichever thread later reads or writes it. Only IP literals are
// accepted, because name resolution may run on other threads (or in cgo).
// [Prober] uses this to dial a service every 20 ms and report the outages a
// client observes, without helper processes or a TestMain hook.
//
// Everything here needs root; tests call [SkipIfUnavailable] (or check
// [Available]) first. The package runs ip(8), tc(8) and ebtables(8) with
// os/exec and never through a shell.
package netns
