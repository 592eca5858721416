package netns

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestMain(m *testing.M) {
	// Clear what a crashed earlier run left behind; live labs of other test
	// binaries are kept.
	if err := Cleanup(); err != nil {
		_, _ = os.Stderr.WriteString("netns: cleanup of stale labs: " + err.Error() + "\n")
	}
	os.Exit(m.Run())
}

// serveLines answers every connection to h's port 7000 with one line and
// returns the address.
func serveLines(t *testing.T, h *Host) string {
	t.Helper()
	addr := net.JoinHostPort(h.IP, "7000")
	ln, err := h.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen in %s: %v", h, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte("hello from " + h.Name + "\n"))
			}()
		}
	}()
	return addr
}

// fetchLine dials addr from h and reads one line.
func fetchLine(h *Host, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// poll calls cond until it returns nil or the deadline passes.
func poll(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func reachable(from *Host, addr string) func() error {
	return func() error {
		_, err := fetchLine(from, addr, 300*time.Millisecond)
		return err
	}
}

func unreachable(from *Host, addr string) func() error {
	return func() error {
		if line, err := fetchLine(from, addr, 300*time.Millisecond); err == nil {
			return errors.New("still answers: " + line)
		}
		return nil
	}
}

func TestTwoHostsTalk(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l := NewLab(t, "10.77.0.0/24")
	a, b := l.AddHost("a"), l.AddHost("b")
	if a.IP != "10.77.0.1" || b.IP != "10.77.0.2" {
		t.Fatalf("addresses = %s, %s; want 10.77.0.1, 10.77.0.2", a.IP, b.IP)
	}

	line, err := fetchLine(a, serveLines(t, b), 2*time.Second)
	if err != nil || line != "hello from b" {
		t.Fatalf("a -> b: %q, %v", line, err)
	}
	if _, err := exec.LookPath("ping"); err == nil || testenv.Full() {
		testenv.Command(t, "ping", "iputils-ping")
		if out, err := a.Run("ping", "-c", "1", "-W", "2", b.IP); err != nil {
			t.Fatalf("ping a -> b: %v\n%s", err, out)
		}
	}
	// Commands run inside the namespace: they see the host's address only.
	out, err := b.Run("ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(out, b.IP+"/24") {
		t.Fatalf("ip addr in b: %v\n%s", err, out)
	}
	if !b.HasAddr(b.IP) || b.HasAddr(a.IP) {
		t.Fatalf("HasAddr: b has %v", b.Addrs())
	}
	// Sockets opened in namespaces never leave a pooled thread behind in
	// one: every goroutine of the test process still sees the root stack.
	for range 20 {
		if _, err := fetchLine(a, net.JoinHostPort(b.IP, "7000"), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				t.Error(err)
				return
			}
			for _, ad := range addrs {
				if strings.HasPrefix(ad.String(), "10.77.0.") {
					t.Errorf("a goroutine of the test process sees lab address %s", ad)
				}
			}
		}()
	}
	wg.Wait()
	// The lab has no way out.
	if _, err := a.Run("ip", "route", "get", "1.1.1.1"); err == nil {
		t.Fatal("host has a route to the outside world")
	}
}

func TestCutAndHeal(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l := NewLab(t, "")
	a, b := l.AddHost("a"), l.AddHost("b")
	addr := serveLines(t, b)
	poll(t, "a reaches b", 5*time.Second, reachable(a, addr))

	if err := b.Cut(); err != nil {
		t.Fatal(err)
	}
	poll(t, "cut stops a -> b", 5*time.Second, unreachable(a, addr))
	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	poll(t, "heal restores a -> b", 5*time.Second, reachable(a, addr))
}

func TestBlockCutsOnlyThePair(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l := NewLab(t, "")
	a, b, c := l.AddHost("a"), l.AddHost("b"), l.AddHost("c")
	toA, toB, toC := serveLines(t, a), serveLines(t, b), serveLines(t, c)
	// A secondary address on b, as a floating IP would be.
	vip := l.NextAddr()
	if err := b.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	if !b.HasAddr(vip) {
		t.Fatalf("b lacks %s: %v", vip, b.Addrs())
	}
	vipLn, err := b.Listen("tcp", net.JoinHostPort(vip, "7001"))
	if err != nil {
		t.Fatal(err)
	}
	defer vipLn.Close()
	go func() {
		for {
			conn, err := vipLn.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte("vip\n"))
			conn.Close()
		}
	}()
	toVIP := net.JoinHostPort(vip, "7001")
	poll(t, "a reaches b's floating IP", 5*time.Second, reachable(a, toVIP))

	if err := a.Block(b); err != nil {
		t.Fatal(err)
	}
	if err := a.Block(b); err != nil { // idempotent
		t.Fatal(err)
	}
	poll(t, "block stops a -> b", 5*time.Second, unreachable(a, toB))
	for _, tc := range []struct {
		name string
		from *Host
		addr string
		ok   bool
	}{
		{"b -> a blocked", b, toA, false},
		{"a -> b's floating IP blocked", a, toVIP, false},
		{"a -> c open", a, toC, true},
		{"b -> c open", b, toC, true},
		{"c -> a open", c, toA, true},
		{"c -> b's floating IP open", c, toVIP, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fetchLine(tc.from, tc.addr, 500*time.Millisecond)
			if (err == nil) != tc.ok {
				t.Fatalf("reachable = %v (err %v), want %v", err == nil, err, tc.ok)
			}
		})
	}
	if err := b.Unblock(a); err != nil {
		t.Fatal(err)
	}
	poll(t, "unblock restores a -> b", 5*time.Second, reachable(a, toB))

	if err := b.DelAddr(vip); err != nil {
		t.Fatal(err)
	}
	if b.HasAddr(vip) {
		t.Fatalf("b still has %s", vip)
	}
}

// connectTime is the fastest of n TCP handshakes, about one round trip.
func connectTime(t *testing.T, from *Host, addr string, n int) time.Duration {
	t.Helper()
	best := time.Hour
	for range n {
		start := time.Now()
		c, err := from.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		if d := time.Since(start); d < best {
			best = d
		}
		c.Close()
	}
	return best
}

func TestNetem(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l := NewLab(t, "")
	a, b := l.AddHost("a"), l.AddHost("b")
	addr := serveLines(t, b)
	poll(t, "a reaches b", 5*time.Second, reachable(a, addr))

	if err := a.Netem("delay 50ms"); err != nil {
		t.Fatal(err)
	}
	rtt := connectTime(t, a, addr, 5)
	t.Logf("round trip with 50ms delay: %s (userspace relay: %v)", rtt, kernelNetemMissing.Load())
	if rtt < 40*time.Millisecond {
		t.Fatalf("round trip with 50ms delay = %s, want >= 40ms", rtt)
	}
	if err := a.Netem("delay 50ms 10ms loss 100%"); err != nil {
		t.Fatal(err)
	}
	poll(t, "100% loss stops a -> b", 5*time.Second, unreachable(a, addr))

	if err := a.ClearNetem(); err != nil {
		t.Fatal(err)
	}
	poll(t, "clear restores a -> b", 5*time.Second, reachable(a, addr))
	if rtt := connectTime(t, a, addr, 5); rtt >= 40*time.Millisecond {
		t.Fatalf("round trip after ClearNetem = %s, want the delay gone", rtt)
	}
	if err := a.ClearNetem(); err != nil { // nothing to clear
		t.Fatal(err)
	}
	if err := a.Netem("reorder 25%"); err == nil && kernelNetemMissing.Load() {
		t.Fatal("unsupported option accepted by the userspace relay")
	}
}

func TestProberSeesCut(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l := NewLab(t, "")
	client, server := l.AddHost("client"), l.AddHost("server")
	addr := serveLines(t, server)

	p := client.Probe(addr, ProbeConfig{Interval: 20 * time.Millisecond, Expect: "hello"})
	if err := p.WaitFor(true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	if err := server.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitFor(false, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the fault lasts this long: the thing being measured
	if err := server.Heal(); err != nil {
		t.Fatal(err)
	}
	cut := time.Since(cutAt)
	if err := p.WaitFor(true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stop()

	ok, failed := p.Counts()
	outages := p.Outages()
	t.Logf("cut for %s: ok=%d failed=%d outages=%v", cut.Round(time.Millisecond), ok, failed, outages)
	if len(outages) != 1 {
		t.Fatalf("outages = %v, want exactly one", outages)
	}
	if d := p.LongestOutage(); d < cut/2 || d > cut+3*time.Second {
		t.Fatalf("longest outage = %s for a %s cut", d, cut)
	}
	if failed < 10 || ok < 2 {
		t.Fatalf("ok=%d failed=%d, want both sampled", ok, failed)
	}
}

func TestFlap(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l := NewLab(t, "")
	client, server := l.AddHost("client"), l.AddHost("server")
	addr := serveLines(t, server)
	p := client.Probe(addr, ProbeConfig{})
	if err := p.WaitFor(true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f := server.Flap(600*time.Millisecond, 1800*time.Millisecond)
	if err := f.Wait(); err != nil {
		t.Fatal(err)
	}
	if c := f.Cycles(); c != 3 {
		t.Fatalf("cycles = %d, want 3", c)
	}
	if err := p.WaitFor(true, 5*time.Second); err != nil {
		t.Fatalf("link not left up: %v", err)
	}
	p.Stop()
	if n := len(p.Outages()); n < 2 {
		t.Fatalf("outages = %v, want one per flap", p.Outages())
	}
}

// labLeftovers lists namespaces, root links and markers of lab name.
func labLeftovers(t *testing.T, name string) []string {
	t.Helper()
	var left []string
	ns, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	links, err := exec.Command("ip", "-o", "link").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(ns)+string(links), "\n") {
		if strings.Contains(line, name) {
			left = append(left, line)
		}
	}
	if exists(ownerDir + "/" + name) {
		left = append(left, "marker")
	}
	return left
}

func TestCleanupLeavesNothing(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	var name string
	t.Run("lab", func(t *testing.T) {
		l := NewLab(t, "")
		name = l.Name()
		a, b := l.AddHost("a"), l.AddHost("b")
		hostSide := l.HostSide()
		addr := serveLines(t, b)
		// The root namespace reaches the lab through HostSide only.
		poll(t, "root reaches b", 5*time.Second, func() error {
			c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
		if hostSide == "" || a.HasAddr(hostSide) {
			t.Fatalf("host side address %q", hostSide)
		}
		// Things the test forgets to stop: a process, a prober, a flap, a relay.
		cmd := a.Command(context.Background(), "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = cmd.Wait() }()
		a.Probe(addr, ProbeConfig{})
		b.Flap(time.Second, time.Minute)
		if err := a.Netem("delay 5ms"); err != nil {
			t.Fatal(err)
		}
		if len(labLeftovers(t, name)) == 0 {
			t.Fatal("lab not visible in ip netns / ip link")
		}
	})
	if left := labLeftovers(t, name); len(left) > 0 {
		t.Fatalf("left behind by lab %s:\n%s", name, strings.Join(left, "\n"))
	}
}

func TestCleanupRemovesStaleLabsOnly(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	live := NewLab(t, "")
	live.AddHost("a")

	// A lab whose owner died: build one without t.Cleanup and give it to a
	// process that has exited.
	stale, err := newLab("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = destroy(stale.name) })
	if _, err := stale.addHost("a"); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	marker := "pid=" + strconv.Itoa(dead.Process.Pid) + " start=1 subnet=" + stale.subnet.String() + "\n"
	if err := os.WriteFile(ownerDir+"/"+stale.name, []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := Cleanup(); err != nil {
		t.Fatal(err)
	}
	if left := labLeftovers(t, stale.name); len(left) > 0 {
		t.Fatalf("stale lab %s not removed:\n%s", stale.name, strings.Join(left, "\n"))
	}
	if len(labLeftovers(t, live.Name())) == 0 {
		t.Fatalf("live lab %s removed", live.Name())
	}
}

func TestParallelLabsDoNotClash(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	names := make(chan string, 2)
	t.Run("group", func(t *testing.T) {
		for _, n := range []string{"one", "two"} {
			t.Run(n, func(t *testing.T) {
				t.Parallel()
				// Same subnet and same host names in both labs, built at once.
				l := NewLab(t, "10.78.0.0/24")
				a, b := l.AddHost("edge1"), l.AddHost("edge2")
				addr := serveLines(t, b)
				poll(t, "edge1 reaches edge2", 5*time.Second, reachable(a, addr))
				if line, _ := fetchLine(a, addr, time.Second); line != "hello from edge2" {
					t.Fatalf("edge1 -> edge2: %q", line)
				}
				names <- l.Name()
			})
		}
	})
	close(names)
	one, two := <-names, <-names
	if one == "" || one == two {
		t.Fatalf("lab names %q, %q", one, two)
	}
}

func TestParallelLabsCannotReachEachOther(t *testing.T) {
	SkipIfUnavailable(t)
	t.Parallel()
	l1, l2 := NewLab(t, ""), NewLab(t, "")
	if l1.Subnet().Overlaps(l2.Subnet()) {
		t.Fatalf("default subnets overlap: %s, %s", l1.Subnet(), l2.Subnet())
	}
	a1, a2 := l1.AddHost("edge"), l2.AddHost("edge")
	b1 := l1.AddHost("peer")
	poll(t, "a1 reaches its own lab", 5*time.Second, reachable(a1, serveLines(t, b1)))
	if line, err := fetchLine(a1, serveLines(t, a2), 300*time.Millisecond); err == nil {
		t.Fatalf("lab %s reached lab %s: %q", l1.Name(), l2.Name(), line)
	}
}
