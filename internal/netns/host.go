package netns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Host is one machine of a [Lab]: a network namespace with lo and one
// interface, eth0, cabled to the lab bridge. Its exported fields are
// read-only. Methods are safe for concurrent use.
type Host struct {
	// Name is the name given to [Lab.AddHost].
	Name string
	// NS is the namespace name, for `ip netns exec NS ...`.
	NS string
	// IP is the host's primary address, without prefix length.
	IP string
	// Iface is the host's interface inside NS ("eth0").
	Iface string
	// MAC is the hardware address of Iface.
	MAC string

	lab  *Lab
	port string // bridge port (veth peer) in the switch namespace

	mu    sync.Mutex
	relay *relay // userspace impairment, when kernel netem is missing
}

// Lab returns the lab the host belongs to.
func (h *Host) Lab() *Lab { return h.lab }

// String returns "name(ip)".
func (h *Host) String() string { return h.Name + "(" + h.IP + ")" }

// Command returns a command that runs name inside the host's namespace
// (`ip netns exec NS name args...`). ip execs the program after entering the
// namespace, so the started process is the program itself and
// cmd.Process.Signal reaches it. The caller starts and waits for it;
// processes still running when the lab closes are killed.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs a short command inside the host's namespace and returns its
// combined output. It is bounded by a 20 s timeout.
func (h *Host) Run(name string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Cut unplugs the host's cable: the bridge side of its veth goes down, the
// host sees NO-CARRIER and no frame passes either way. Addresses, routes and
// processes inside the host are untouched.
func (h *Host) Cut() error {
	if _, err := run("ip", "-n", h.lab.sw, "link", "set", h.port, "down"); err != nil {
		return fmt.Errorf("cut %s: %w", h, err)
	}
	return nil
}

// Heal plugs the cable back in. The bridge port forwards at once (no STP).
func (h *Host) Heal() error {
	if _, err := run("ip", "-n", h.lab.sw, "link", "set", h.port, "up"); err != nil {
		return fmt.Errorf("heal %s: %w", h, err)
	}
	return nil
}

// Block partitions h and other from each other only: the lab switch drops
// every frame from one's MAC address to the other's, both ways (ebtables in
// the switch namespace). ARP broadcasts still flood, but no answer comes
// back, so neither can reach any address of the other — secondary (floating)
// addresses included — while both still reach everyone else. Blocking an
// already blocked pair does nothing.
func (h *Host) Block(other *Host) error {
	return h.setBlock(other, true)
}

// Unblock lifts a [Host.Block] between h and other.
func (h *Host) Unblock(other *Host) error {
	return h.setBlock(other, false)
}

func (h *Host) setBlock(other *Host, block bool) error {
	if other.lab != h.lab {
		return errors.New("block: hosts are in different labs")
	}
	if other == h {
		return errors.New("block: a host cannot be blocked from itself")
	}
	key := [2]string{h.MAC, other.MAC}
	if key[0] > key[1] {
		key[0], key[1] = key[1], key[0]
	}
	l := h.lab
	l.mu.Lock()
	defer l.mu.Unlock() // serializes rule changes so the map matches the kernel
	if l.blocks[key] == block {
		return nil
	}
	op := "-A"
	if !block {
		op = "-D"
	}
	for _, dir := range [][2]string{{h.MAC, other.MAC}, {other.MAC, h.MAC}} {
		if _, err := run("ip", "netns", "exec", l.sw, "ebtables", op, "FORWARD",
			"-s", dir[0], "-d", dir[1], "-j", "DROP"); err != nil {
			return fmt.Errorf("block %s/%s: %w", h, other, err)
		}
	}
	l.blocks[key] = block
	return nil
}

// AddAddr adds a secondary address to the host's eth0, as a floating IP
// would be. cidr may omit the prefix length; the lab's is used then. No
// gratuitous ARP is sent.
func (h *Host) AddAddr(cidr string) error {
	p, err := h.lab.addrPrefix(cidr)
	if err != nil {
		return err
	}
	if _, err := run("ip", "-n", h.NS, "addr", "add", p, "dev", h.Iface); err != nil {
		return fmt.Errorf("add address to %s: %w", h, err)
	}
	return nil
}

// DelAddr removes an address added with [Host.AddAddr] (or by drawbridge).
func (h *Host) DelAddr(cidr string) error {
	p, err := h.lab.addrPrefix(cidr)
	if err != nil {
		return err
	}
	if _, err := run("ip", "-n", h.NS, "addr", "del", p, "dev", h.Iface); err != nil {
		return fmt.Errorf("delete address from %s: %w", h, err)
	}
	return nil
}

// HasAddr reports whether any interface of the host carries ip (given with
// or without prefix length). It reports false when the host cannot be asked.
func (h *Host) HasAddr(ip string) bool {
	want, _, _ := strings.Cut(ip, "/")
	for _, a := range h.Addrs() {
		if a == want {
			return true
		}
	}
	return false
}

// Addrs lists the IPv4 addresses of the host's interfaces (lo excluded),
// without prefix length.
func (h *Host) Addrs() []string {
	out, err := run("ip", "-n", h.NS, "-o", "-4", "addr", "show")
	if err != nil {
		return nil
	}
	var addrs []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		// "2: eth0    inet 10.77.0.1/24 brd ... scope global eth0 ..."
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" && f[1] != "lo" {
				a, _, _ := strings.Cut(f[i+1], "/")
				addrs = append(addrs, a)
			}
		}
	}
	return addrs
}

// addrPrefix turns "a.b.c.d" or "a.b.c.d/n" into a prefix string, using the
// lab's prefix length when none is given.
func (l *Lab) addrPrefix(s string) (string, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", s, err)
		}
		return p.String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", s, err)
	}
	return netip.PrefixFrom(a, l.subnet.Bits()).String(), nil
}

// Flapper is a link flap running in the background; see [Host.Flap].
type Flapper struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	err    error
	cycles int
}

// Flap cuts and heals the host's cable in the background: down for the
// first half of every period, up for the second half, until total has
// passed, [Flapper.Stop] is called or the lab closes. The link is always left
// up. Unlike a sleep loop in the test, a flapper never outlives its lab.
func (h *Host) Flap(period, total time.Duration) *Flapper {
	f := &Flapper{stop: make(chan struct{}), done: make(chan struct{})}
	if period <= 0 || total <= 0 || !h.lab.onClose(func() { _ = f.Stop() }) {
		close(f.done)
		return f
	}
	go f.loop(h, period, total)
	return f
}

func (f *Flapper) loop(h *Host, period, total time.Duration) {
	defer close(f.done)
	end := time.Now().Add(total)
	wait := func(d time.Duration) bool {
		if rem := time.Until(end); rem < d {
			d = rem
		}
		if d <= 0 {
			return false
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-f.stop:
			return false
		}
	}
	for time.Now().Before(end) {
		f.record(h.Cut())
		ok := wait(period / 2)
		f.record(h.Heal())
		f.mu.Lock()
		f.cycles++
		f.mu.Unlock()
		if !ok || !wait(period-period/2) {
			break
		}
	}
}

func (f *Flapper) record(err error) {
	if err == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// Wait blocks until the flap is over and returns the first error met.
func (f *Flapper) Wait() error {
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Stop ends the flap early, leaving the link up, and waits for it.
func (f *Flapper) Stop() error {
	f.once.Do(func() { close(f.stop) })
	return f.Wait()
}

// Cycles returns how many down/up cycles have been done so far.
func (f *Flapper) Cycles() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cycles
}
