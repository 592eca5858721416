//go:build linux

package floatingip

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/drawbridge-lb/drawbridge/internal/netns"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// nsDeps aims a vip provider at the network namespace named ns: a netlink
// handle bound to it, and a way to create sockets inside it. The host's own
// interfaces are never touched.
func nsDeps(t *testing.T, ns string) vipDeps {
	t.Helper()
	h, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatalf("open namespace %s: %v", ns, err)
	}
	t.Cleanup(func() { h.Close() })
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns, err)
	}
	t.Cleanup(nl.Close)
	return vipDeps{nl: nl, inNS: func(fn func() error) error { return runInNS(h, fn) }}
}

// runInNS runs fn on a fresh OS thread that has joined namespace h. The
// goroutine exits without unlocking its thread, so the runtime discards the
// thread instead of reusing it in the wrong namespace. Sockets created by fn
// keep the namespace for their lifetime.
func runInNS(h vnetns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := vnetns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// newTestVIP builds a vip provider inside host's namespace on its eth0.
func newTestVIP(t *testing.T, host *netns.Host, addr string, prefixLen int) *VIP {
	t.Helper()
	log, _ := testLogger(t)
	v, err := newVIP(Config{Provider: "vip", Address: addr, Interface: host.Iface, PrefixLen: prefixLen, Logger: log},
		netip.MustParseAddr(addr), nsDeps(t, host.NS))
	if err != nil {
		t.Fatalf("newVIP in %s: %v", host, err)
	}
	// Announcements still in flight must not outlive the test (and its lab).
	t.Cleanup(v.stopAnnounce)
	return v
}

// garpCapture records the gratuitous ARP announcements for one address seen
// on a host's interface.
type garpCapture struct {
	mu   sync.Mutex
	seen []garpSeen
}

type garpSeen struct {
	at time.Time
	hw net.HardwareAddr
}

// captureGARP listens for ARP on host's eth0 (inside its namespace) until the
// test ends.
func captureGARP(t *testing.T, host *netns.Host, vip netip.Addr) *garpCapture {
	t.Helper()
	deps := nsDeps(t, host.NS)
	link, err := deps.nl.LinkByName(host.Iface)
	if err != nil {
		t.Fatal(err)
	}
	ifi := &net.Interface{Index: link.Attrs().Index, Name: host.Iface, HardwareAddr: link.Attrs().HardwareAddr}
	var conn *packet.Conn
	if err := deps.inNS(func() error {
		var err error
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
		return err
	}); err != nil {
		t.Fatalf("packet socket in %s: %v", host, err)
	}
	c := &garpCapture{}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			var f ethernet.Frame
			if f.UnmarshalBinary(buf[:n]) != nil || f.EtherType != ethernet.EtherTypeARP {
				continue
			}
			var p arp.Packet
			if p.UnmarshalBinary(f.Payload) != nil {
				continue
			}
			if p.Operation == arp.OperationRequest && p.SenderIP == vip && p.TargetIP == vip &&
				f.Destination.String() == ethernet.Broadcast.String() {
				c.mu.Lock()
				c.seen = append(c.seen, garpSeen{at: time.Now(), hw: p.SenderHardwareAddr})
				c.mu.Unlock()
			}
		}
	}()
	return c
}

func (c *garpCapture) get() []garpSeen {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]garpSeen(nil), c.seen...)
}

func TestVIPClaimAnnounceRelease(t *testing.T) {
	netns.SkipIfUnavailable(t)
	lab := netns.NewLab(t, "")
	a, b := lab.AddHost("a"), lab.AddHost("b")
	vipStr := lab.NextAddr()
	vip := netip.MustParseAddr(vipStr)

	capture := captureGARP(t, b, vip)
	v := newTestVIP(t, a, vipStr, 32)
	ctx := context.Background()

	mustHeld(t, v, false)
	if err := v.Claim(ctx); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if !a.HasAddr(vipStr) {
		t.Fatalf("%s lacks %s after Claim: %v", a, vipStr, a.Addrs())
	}
	mustHeld(t, v, true)

	// Announcements reach the peer: garpCount of them, from a's MAC, spaced.
	testenv.Eventually(t, 5*time.Second, "gratuitous ARP on the peer", func() bool { return len(capture.get()) >= garpCount })
	seen := capture.get()
	for i, s := range seen {
		if !strings.EqualFold(s.hw.String(), a.MAC) {
			t.Errorf("announcement %d from %s, want %s", i, s.hw, a.MAC)
		}
		if i > 0 && s.at.Sub(seen[i-1].at) < garpInterval*8/10 {
			t.Errorf("announcement %d came %s after the previous one", i, s.at.Sub(seen[i-1].at))
		}
	}

	// A second Claim is a no-op: still exactly one address.
	if err := v.Claim(ctx); err != nil {
		t.Fatalf("second Claim: %v", err)
	}
	if n := strings.Count(strings.Join(a.Addrs(), " "), vipStr); n != 1 {
		t.Fatalf("%s carries %s %d times", a, vipStr, n)
	}

	if err := v.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if a.HasAddr(vipStr) {
		t.Fatalf("%s still has %s after Release", a, vipStr)
	}
	mustHeld(t, v, false)
	if err := v.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}

	// Release right after Claim stops the background announcements.
	if err := v.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Release(ctx); err != nil {
		t.Fatal(err)
	}
	mustHeld(t, v, false)
}

func TestVIPPeerLearnsNewHolder(t *testing.T) {
	netns.SkipIfUnavailable(t)
	lab := netns.NewLab(t, "")
	a, b, c := lab.AddHost("a"), lab.AddHost("b"), lab.AddHost("c")
	vipStr := lab.NextAddr()
	va := newTestVIP(t, a, vipStr, 24)
	vc := newTestVIP(t, c, vipStr, 24)
	ctx := context.Background()

	// b talks to the VIP on a, so its neighbour table maps the VIP to a.
	if err := va.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	pingVIP(t, b, vipStr)
	if got := neighMAC(b, vipStr); !strings.EqualFold(got, a.MAC) {
		t.Fatalf("%s maps %s to %q, want %s", b, vipStr, got, a.MAC)
	}
	if err := va.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// The kernel ignores ARP overrides of an entry updated less than
	// neigh/locktime (1 s) ago; wait that out so only the announcement
	// matters.
	time.Sleep(1100 * time.Millisecond)

	// c claims: b sends nothing, so only the announcement can update b.
	if err := vc.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	waitNeigh(t, b, vipStr, c.MAC, 3*time.Second, "the peer's neighbour entry to follow the VIP")
}

// pingVIP pings ip once from host, so host's neighbour table learns it.
func pingVIP(t *testing.T, host *netns.Host, ip string) {
	t.Helper()
	if out, err := host.Run("ping", "-c1", "-W2", ip); err != nil {
		t.Fatalf("ping the VIP from %s: %v\n%s", host, err, out)
	}
}

// waitNeigh waits until host's neighbour table maps ip to mac.
func waitNeigh(t *testing.T, host *netns.Host, ip, mac string, timeout time.Duration, what string) {
	t.Helper()
	testenv.Eventually(t, timeout, what, func() bool { return strings.EqualFold(neighMAC(host, ip), mac) })
}

// neighMAC returns the link-layer address host's neighbour table has for ip.
func neighMAC(host *netns.Host, ip string) string {
	out, err := host.Run("ip", "neigh", "show", ip)
	if err != nil {
		return ""
	}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "lladdr" {
			return f[i+1]
		}
	}
	return ""
}

func TestVIPAddressWithOtherPrefix(t *testing.T) {
	netns.SkipIfUnavailable(t)
	lab := netns.NewLab(t, "")
	a := lab.AddHost("a")
	vipStr := lab.NextAddr()
	if err := a.AddAddr(vipStr); err != nil { // lab prefix (/24), not /32
		t.Fatal(err)
	}
	v := newTestVIP(t, a, vipStr, 32)
	ctx := context.Background()
	mustHeld(t, v, true)
	if err := v.Claim(ctx); err != nil {
		t.Fatalf("Claim of a present address: %v", err)
	}
	if err := v.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if a.HasAddr(vipStr) {
		t.Fatalf("Release left %s/24 in place", vipStr)
	}
}

func TestVIPInterfaceResolution(t *testing.T) {
	netns.SkipIfUnavailable(t)
	lab := netns.NewLab(t, "")
	a, b := lab.AddHost("a"), lab.AddHost("b")
	vip := lab.NextAddr()
	deps := nsDeps(t, a.NS)
	cfg := Config{Provider: "vip", Address: vip, PrefixLen: 32, Logger: discardLogger()}

	// Lab hosts have no default route: the interface must be given.
	_, err := newVIP(cfg, netip.MustParseAddr(vip), deps)
	if err == nil || !strings.Contains(err.Error(), "default route") || !strings.Contains(err.Error(), "floating_ip.interface") {
		t.Fatalf("newVIP without interface or default route: %v", err)
	}

	if out, err := a.Run("ip", "route", "add", "default", "via", b.IP); err != nil {
		t.Fatalf("add default route: %v\n%s", err, out)
	}
	v, err := newVIP(cfg, netip.MustParseAddr(vip), deps)
	if err != nil {
		t.Fatalf("newVIP with a default route: %v", err)
	}
	if v.Interface() != a.Iface {
		t.Fatalf("interface = %q, want %q", v.Interface(), a.Iface)
	}

	cfg.Interface = "nosuch0"
	if _, err := newVIP(cfg, netip.MustParseAddr(vip), deps); err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Fatalf("newVIP with a missing interface: %v", err)
	}
}

func TestGARPFrame(t *testing.T) {
	hw := net.HardwareAddr{0x02, 0xdb, 0, 0, 0, 1}
	ip := netip.MustParseAddr("192.0.2.10")
	b, err := garpFrame(hw, ip)
	if err != nil {
		t.Fatal(err)
	}
	var f ethernet.Frame
	if err := f.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		t.Fatal(err)
	}
	if f.Destination.String() != "ff:ff:ff:ff:ff:ff" || f.Source.String() != hw.String() ||
		p.Operation != arp.OperationRequest || p.SenderIP != ip || p.TargetIP != ip ||
		p.SenderHardwareAddr.String() != hw.String() || p.TargetHardwareAddr.String() != "00:00:00:00:00:00" {
		t.Fatalf("unexpected frame %+v / packet %+v", f, p)
	}
}

// TestVIPHolderWinsBackAfterStrayClaim: while a holds the address, c claims
// it for a moment (a flapping link made a look dead to c) and lets go. b,
// the client, followed c's announcement. a never released, so it never
// claims again; only its owner loop's periodic announcement brings b back.
func TestVIPHolderWinsBackAfterStrayClaim(t *testing.T) {
	netns.SkipIfUnavailable(t)
	lab := netns.NewLab(t, "")
	a, b, c := lab.AddHost("a"), lab.AddHost("b"), lab.AddHost("c")
	vipStr := lab.NextAddr()
	va := newTestVIP(t, a, vipStr, 24)
	vc := newTestVIP(t, c, vipStr, 24)
	ctx := context.Background()

	o := NewOwner(OwnerConfig{NodeName: "a", Address: vipStr, Interval: 20 * time.Millisecond,
		AnnounceInterval: 300 * time.Millisecond, StartupWait: time.Millisecond},
		va, newFakeView(), func() bool { return true }, nil, nil, prometheus.NewRegistry())
	octx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { o.Run(octx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 5*time.Second, "a to claim", func() bool { return o.Claim().Holding })
	pingVIP(t, b, vipStr)
	// Past neigh/locktime (1 s), so c's announcement is not ignored.
	time.Sleep(1100 * time.Millisecond)

	if err := vc.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	waitNeigh(t, b, vipStr, c.MAC, 3*time.Second, "the client to follow the stray claim")
	if err := vc.Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitNeigh(t, b, vipStr, a.MAC, 5*time.Second, "the holder's announcement to win the client back")
	pingVIP(t, b, vipStr)
}

// TestVIPAnnounceOnlyWhenHeld: Announce sends one announcement when the
// address is here and none when it is not.
func TestVIPAnnounceOnlyWhenHeld(t *testing.T) {
	netns.SkipIfUnavailable(t)
	lab := netns.NewLab(t, "")
	a, b := lab.AddHost("a"), lab.AddHost("b")
	vipStr := lab.NextAddr()
	capture := captureGARP(t, b, netip.MustParseAddr(vipStr))
	v := newTestVIP(t, a, vipStr, 32)
	ctx := context.Background()
	if err := v.Announce(ctx); err != nil {
		t.Fatalf("Announce without the address: %v", err)
	}
	if err := v.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the claim's announcements", func() bool { return len(capture.get()) >= garpCount })
	if err := v.Announce(ctx); err != nil {
		t.Fatalf("Announce: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "one more announcement", func() bool { return len(capture.get()) == garpCount+1 })
	if err := v.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Announce(ctx); err != nil {
		t.Fatalf("Announce after Release: %v", err)
	}
	// Observation window: an announcement crosses the veth pair in well
	// under a millisecond; nothing more may arrive.
	time.Sleep(300 * time.Millisecond)
	if n := len(capture.get()); n != garpCount+1 {
		t.Errorf("%d announcements, want %d: Announce without the address sent one", n, garpCount+1)
	}
}
