package netns

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Prefix starts the name of every lab, and so of every namespace and link a
// lab creates. [Cleanup] only ever considers names with this prefix.
const Prefix = "dbnl"

// labNameLen is len(Prefix) plus six hex digits.
const labNameLen = len(Prefix) + 6

// hostIface is the name of a host's only interface inside its namespace.
const hostIface = "eth0"

// bridgeName is the lab bridge inside the switch namespace.
const bridgeName = "br0"

// cmdTimeout bounds every ip/tc/ebtables invocation so a wedged command
// cannot hang a test.
const cmdTimeout = 20 * time.Second

var (
	// ownerDir holds one marker file per live lab; see [Cleanup].
	ownerDir = "/run/drawbridge-netns"
	// netnsDir is where `ip netns add` mounts named namespaces.
	netnsDir = "/run/netns"
)

// ErrUnavailable is wrapped by [Available] when namespace tests cannot run
// here: not root, not Linux, a missing tool, or `ip netns` not working.
var ErrUnavailable = errors.New("network namespace labs unavailable")

var availableOnce = sync.OnceValue(probeAvailable)

// Available reports whether labs can be built on this machine: it returns nil
// when running as root on Linux with ip(8) and ebtables(8) installed and
// `ip netns add` working. The result is computed once per process.
func Available() error { return availableOnce() }

// SkipIfUnavailable skips the test when [Available] reports an error, or
// fails it where the full suite is required (see [testenv.Full]).
func SkipIfUnavailable(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		testenv.Missing(t, "%v", err)
	}
}

func probeAvailable() error {
	if !isLinux {
		return fmt.Errorf("%w: needs Linux", ErrUnavailable)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root", ErrUnavailable)
	}
	for _, tool := range []string{"ip", "ebtables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not found (apt-get install iproute2 iptables)", ErrUnavailable, tool)
		}
	}
	if _, err := setnsSyscall(); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	name := fmt.Sprintf("%sprobe-%d", Prefix, os.Getpid())
	if _, err := run("ip", "netns", "add", name); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if _, err := run("ip", "netns", "del", name); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// Lab is one virtual layer-2 segment: a bridge in its own namespace and the
// hosts plugged into it. Create it with [NewLab]; it is torn down by the
// test's cleanup. All methods are safe for concurrent use.
type Lab struct {
	t      testing.TB
	name   string
	subnet netip.Prefix
	sw     string // switch namespace

	mu       sync.Mutex
	hosts    []*Host
	nextHost int        // next host index, for port names h1, h2, ...
	nextAddr netip.Addr // next address handed out by allocAddr
	hostSide string     // root-namespace address, when HostSide was called
	blocks   map[[2]string]bool
	stoppers []func() // flappers, probers, relays: stopped before teardown
	closed   bool
}

// NewLab creates an empty lab on subnet (an IPv4 private prefix such as
// "10.77.0.0/24"; "" picks a free /24 from 10.200.0.0–10.250.255.0) and
// registers its teardown with t.Cleanup: every process still running in the
// lab's namespaces is killed and the namespaces, links and rules are deleted,
// whether the test passed or not. It fails the test when the lab cannot be
// built; call [SkipIfUnavailable] first.
func NewLab(t testing.TB, subnet string) *Lab {
	t.Helper()
	l, err := newLab(subnet)
	if err != nil {
		t.Fatalf("netns: new lab: %v", err)
	}
	l.t = t
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netns: tear down lab %s: %v", l.name, err)
		}
	})
	t.Logf("netns: lab %s on %s", l.name, l.subnet)
	return l
}

func newLab(subnet string) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		return nil, fmt.Errorf("owner dir: %w", err)
	}
	for attempt := 0; attempt < 20; attempt++ {
		name := Prefix + randomHex(3)
		if exists(filepath.Join(netnsDir, name+"-sw")) {
			continue
		}
		prefix, err := chooseSubnet(subnet)
		if err != nil {
			return nil, err
		}
		// The marker is created first and exclusively: it reserves the name
		// and tells a concurrent Cleanup that this lab is alive. It is
		// written aside and linked into place, so nobody reads it half
		// written (link fails when the name is taken, like O_EXCL).
		marker := filepath.Join(ownerDir, name)
		tmp := filepath.Join(ownerDir, fmt.Sprintf(".tmp-%s-%d", name, os.Getpid()))
		content := fmt.Sprintf("pid=%d start=%s subnet=%s\n", os.Getpid(), procStart(os.Getpid()), prefix)
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			return nil, fmt.Errorf("owner marker: %w", err)
		}
		err = os.Link(tmp, marker)
		_ = os.Remove(tmp)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("owner marker: %w", err)
		}
		l := &Lab{
			name:     name,
			subnet:   prefix,
			sw:       name + "-sw",
			nextAddr: prefix.Addr().Next(),
			blocks:   map[[2]string]bool{},
		}
		if err := l.build(); err != nil {
			_ = destroy(name)
			return nil, err
		}
		return l, nil
	}
	return nil, errors.New("no free lab name after 20 attempts")
}

func (l *Lab) build() error {
	steps := [][]string{
		{"ip", "netns", "add", l.sw},
		{"ip", "-n", l.sw, "link", "set", "lo", "up"},
		// STP off and no forward delay: a port forwards as soon as it is up,
		// so Heal restores traffic at once. No multicast snooping: frames
		// are flooded like on a dumb switch.
		{"ip", "-n", l.sw, "link", "add", bridgeName, "type", "bridge",
			"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"},
		{"ip", "-n", l.sw, "link", "set", bridgeName, "up"},
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("build switch: %w", err)
		}
	}
	return nil
}

// Name returns the lab's unique name, the prefix of all its namespaces.
func (l *Lab) Name() string { return l.name }

// Subnet returns the lab's IPv4 prefix.
func (l *Lab) Subnet() netip.Prefix { return l.subnet }

// SwitchNS returns the name of the namespace that holds the lab bridge, for
// debugging (`ip netns exec <ns> tcpdump -ni br0`).
func (l *Lab) SwitchNS() string { return l.sw }

// Hosts returns the lab's hosts in the order they were added.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// NextAddr reserves the next unused address of the lab subnet and returns it
// without a prefix length, for example a floating IP that hosts will move
// between them. Hosts never get an address handed out here.
func (l *Lab) NextAddr() string {
	a, err := l.allocAddr()
	if err != nil {
		l.fatalf("%v", err)
	}
	return a.String()
}

func (l *Lab) allocAddr() (netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.nextAddr
	last := lastAddr(l.subnet)
	if !a.IsValid() || !l.subnet.Contains(a) || a.Compare(last) >= 0 {
		return netip.Addr{}, fmt.Errorf("lab %s: subnet %s is full", l.name, l.subnet)
	}
	l.nextAddr = a.Next()
	return a, nil
}

var hostNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)

// AddHost creates a host: a namespace "<lab>-<name>" with lo up and one
// interface, eth0, cabled to the lab bridge, with the next address of the lab
// subnet (.1, .2, ... in order of creation) and a MAC address derived from it
// (02:db:<ip bytes>). name must be lower-case letters, digits and dashes and
// unique in the lab. It fails the test on error.
func (l *Lab) AddHost(name string) *Host {
	h, err := l.addHost(name)
	if err != nil {
		l.fatalf("add host %q: %v", name, err)
	}
	return h
}

func (l *Lab) addHost(name string) (*Host, error) {
	if !hostNameRE.MatchString(name) || name == "sw" {
		return nil, fmt.Errorf("invalid host name (want [a-z0-9][a-z0-9-]{0,30}, not \"sw\")")
	}
	l.mu.Lock()
	for _, h := range l.hosts {
		if h.Name == name {
			l.mu.Unlock()
			return nil, errors.New("duplicate host name")
		}
	}
	l.nextHost++
	port := "h" + strconv.Itoa(l.nextHost)
	l.mu.Unlock()

	addr, err := l.allocAddr()
	if err != nil {
		return nil, err
	}
	h := &Host{
		Name:  name,
		NS:    l.name + "-" + name,
		IP:    addr.String(),
		Iface: hostIface,
		MAC:   macFor(addr),
		lab:   l,
		port:  port,
	}
	cidr := netip.PrefixFrom(addr, l.subnet.Bits()).String()
	steps := [][]string{
		{"ip", "netns", "add", h.NS},
		{"ip", "-n", h.NS, "link", "set", "lo", "up"},
		// The peer is created directly inside the host namespace, so a
		// transient "eth0" never appears next to the switch ports.
		{"ip", "-n", l.sw, "link", "add", port, "type", "veth",
			"peer", "name", hostIface, "address", h.MAC, "netns", h.NS},
		{"ip", "-n", l.sw, "link", "set", port, "master", bridgeName, "up"},
		{"ip", "-n", h.NS, "addr", "add", cidr, "dev", hostIface},
		{"ip", "-n", h.NS, "link", "set", hostIface, "up"},
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	return h, nil
}

// HostSide plugs the root namespace into the lab: a veth "<lab>rt" in the
// root namespace gets the next free lab address, its peer becomes a bridge
// port. The test process can then reach hosts with plain net.Dial. Only the
// connected route of the lab subnet is added to the root namespace; nothing
// is forwarded between the lab and other networks. It returns the address
// and fails the test on error. Calling it twice returns the same address.
// Labs that call it at the same time need distinct subnets, which the
// default ("" to NewLab) guarantees.
func (l *Lab) HostSide() string {
	l.mu.Lock()
	if l.hostSide != "" {
		defer l.mu.Unlock()
		return l.hostSide
	}
	l.mu.Unlock()
	addr, err := l.allocAddr()
	if err != nil {
		l.fatalf("host side: %v", err)
	}
	root := l.name + "rt"
	steps := [][]string{
		{"ip", "link", "add", root, "type", "veth", "peer", "name", "rt", "netns", l.sw},
		{"ip", "-n", l.sw, "link", "set", "rt", "master", bridgeName, "up"},
		{"ip", "addr", "add", netip.PrefixFrom(addr, l.subnet.Bits()).String(), "dev", root},
		{"ip", "link", "set", root, "up"},
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			l.fatalf("host side: %v", err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hostSide = addr.String()
	return l.hostSide
}

// onClose registers fn to run when the lab is closed, before its namespaces
// are deleted. It reports false when the lab is already closed.
func (l *Lab) onClose(fn func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.stoppers = append(l.stoppers, fn)
	return true
}

// Close stops the lab's flappers, probers and relays, kills every process
// left in its namespaces and deletes them all. NewLab registers it with
// t.Cleanup; calling it again is a no-op.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	stoppers := l.stoppers
	l.stoppers = nil
	l.mu.Unlock()
	for i := len(stoppers) - 1; i >= 0; i-- {
		stoppers[i]()
	}
	if err := destroy(l.name); err != nil {
		return err
	}
	if left := leftovers(l.name); len(left) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(left, ", "))
	}
	return nil
}

func (l *Lab) fatalf(format string, args ...any) {
	msg := fmt.Sprintf("netns: lab %s: ", l.name) + fmt.Sprintf(format, args...)
	if l.t == nil {
		panic(msg)
	}
	l.t.Helper()
	l.t.Fatal(msg)
}

// Cleanup removes the labs left behind by test processes that are gone (a
// crashed or killed run): their namespaces, after killing the processes in
// them, their root-namespace link and their owner marker. Labs whose owner
// process is still alive are left alone, so it is safe to call from the
// TestMain of every package while other test binaries run. It does nothing
// when [Available] reports an error.
func Cleanup() error {
	if Available() != nil {
		return nil
	}
	var errs []error
	// Probe namespaces of Available ("<prefix>probe-<pid>") whose process died.
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if pid, ok := strings.CutPrefix(e.Name(), Prefix+"probe-"); ok {
			if n, err := strconv.Atoi(pid); err == nil && procStart(n) == "" {
				if err := deleteNS(e.Name()); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	for _, name := range labNames() {
		if ownerAlive(name) {
			continue
		}
		if err := destroy(name); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// labNames lists the lab names found in named namespaces, root links and
// owner markers.
func labNames() []string {
	seen := map[string]bool{}
	var names []string
	add := func(s string) {
		if len(s) < labNameLen || !strings.HasPrefix(s, Prefix) {
			return
		}
		n := s[:labNameLen]
		if _, err := hex.DecodeString(n[len(Prefix):]); err != nil || seen[n] {
			return
		}
		seen[n] = true
		names = append(names, n)
	}
	for _, dir := range []string{netnsDir, ownerDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			add(e.Name())
		}
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			add(i.Name)
		}
	}
	return names
}

// ownerAlive reports whether the process recorded in the lab's marker still
// runs (same pid and same start time, so a reused pid does not count).
func ownerAlive(name string) bool {
	b, err := os.ReadFile(filepath.Join(ownerDir, name))
	if err != nil {
		return false
	}
	var pid int
	var start string
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "pid":
			pid, _ = strconv.Atoi(v)
		case "start":
			start = v
		}
	}
	return pid > 0 && start != "" && procStart(pid) == start
}

// destroy deletes everything a lab named name may have created. It is
// idempotent.
func destroy(name string) error {
	var errs []error
	entries, _ := os.ReadDir(netnsDir)
	var sw string
	for _, e := range entries {
		ns := e.Name()
		if !strings.HasPrefix(ns, name+"-") {
			continue
		}
		if ns == name+"-sw" {
			sw = ns // last: deleting it also removes the host cables
			continue
		}
		if err := deleteNS(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if sw != "" {
		if err := deleteNS(sw); err != nil {
			errs = append(errs, err)
		}
	}
	root := name + "rt"
	if _, err := net.InterfaceByName(root); err == nil {
		if _, err := run("ip", "link", "del", root); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(ownerDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteNS kills the processes running in ns (a namespace of a lab that is
// being torn down, so they were started for the lab) and deletes it.
func deleteNS(ns string) error {
	if out, err := run("ip", "netns", "pids", ns); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
	}
	if _, err := run("ip", "netns", "del", ns); err != nil && exists(filepath.Join(netnsDir, ns)) {
		return err
	}
	return nil
}

// leftovers lists what still exists of the lab named name.
func leftovers(name string) []string {
	var left []string
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+"-") {
			left = append(left, "netns "+e.Name())
		}
	}
	if _, err := net.InterfaceByName(name + "rt"); err == nil {
		left = append(left, "link "+name+"rt")
	}
	if exists(filepath.Join(ownerDir, name)) {
		left = append(left, "marker "+filepath.Join(ownerDir, name))
	}
	return left
}

// chooseSubnet validates an explicit subnet or picks a free /24 in
// 10.200.0.0–10.250.255.0 that no live lab and no root interface uses.
func chooseSubnet(subnet string) (netip.Prefix, error) {
	if subnet != "" {
		p, err := netip.ParsePrefix(subnet)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("subnet: %w", err)
		}
		p = p.Masked()
		if !p.Addr().Is4() || !p.Addr().IsPrivate() || p.Bits() < 8 || p.Bits() > 29 {
			return netip.Prefix{}, fmt.Errorf("subnet %s: want a private IPv4 prefix between /8 and /29", subnet)
		}
		return p, nil
	}
	used := usedPrefixes()
	for range 200 {
		var b [2]byte
		_, _ = rand.Read(b[:])
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + b[0]%51, b[1], 0}), 24)
		clash := false
		for _, u := range used {
			if u.Overlaps(p) {
				clash = true
				break
			}
		}
		if !clash {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("no free /24 in 10.200.0.0/16–10.250.0.0/16")
}

// usedPrefixes returns the subnets of live labs and of root interfaces.
func usedPrefixes() []netip.Prefix {
	var used []netip.Prefix
	entries, _ := os.ReadDir(ownerDir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(ownerDir, e.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(f, "subnet="); ok {
				if p, err := netip.ParsePrefix(v); err == nil {
					used = append(used, p)
				}
			}
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				used = append(used, p.Masked())
			}
		}
	}
	return used
}

// lastAddr returns the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// macFor derives a locally administered MAC address from a host address,
// which makes captures easy to read.
func macFor(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("02:db:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// procStart returns the start time of a process (field 22 of
// /proc/<pid>/stat), or "" when it does not exist.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// run executes a short command (never through a shell) and returns its
// combined output; the error names the command and carries its output.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
