// Command bench-failover measures how long a client loses the floating IP
// when it moves, with the built drawbridge binary in network namespaces, and
// the same with keepalived when it is installed. It prints figures (median
// of -runs runs); it asserts nothing. Run it as root with
// `make bench-failover`.
//
// Every run builds a fresh lab (internal/netns): a bridge with a backend (a
// TCP server that greets every connection with a line), a client that opens
// a connection to the floating IP every 20 ms through HAProxy and reads the
// line, two edge nodes and, for drawbridge, a witness. The outage is the
// longest stretch of failed client connections around the event:
//
//   - unplanned: the holder's cable is unplugged;
//   - planned: the holder's agent (or keepalived) gets SIGTERM.
//
// drawbridge: edge-a (priority 100) and edge-b (priority 50) with the vip
// provider on eth0 and a witness, default gossip timings.
//
// keepalived: one instance per edge namespace, VRRP over unicast between the
// two, advert_int 1, priorities 150/100, both starting as BACKUP with
// nopreempt (the holder keeps the address, as drawbridge's does; preemption
// plays no part in a move away from a failed or stopped holder). Each edge
// runs HAProxy with a static config that forwards to the backend.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/netns"
	"github.com/drawbridge-lb/drawbridge/internal/procfs"
)

const (
	token       = "bench-token-not-a-secret-000"
	apiPort     = 9000
	raftPort    = 9001
	gossipPort  = 9002
	backendPort = 7000
	frontPort   = 8080
	greeting    = "drawbridge-bench-backend"

	targetUnplanned = 1500 * time.Millisecond
	targetPlanned   = 300 * time.Millisecond
)

type mode string

const (
	unplanned mode = "unplanned"
	planned   mode = "planned"
)

var (
	verbose = flag.Bool("v", false, "log every step")
	haproxy = flag.String("haproxy", "haproxy", "HAProxy binary")
)

func main() {
	bin := flag.String("bin", "bin/drawbridge", "drawbridge binary")
	runs := flag.Int("runs", 5, "runs of each measurement (the median is reported)")
	kaBin := flag.String("keepalived", "keepalived", "keepalived binary; the comparison is skipped when it is not found")
	flag.Parse()
	if err := netns.Available(); err != nil {
		fail(fmt.Errorf("%v (run it as root: sudo make bench-failover)", err))
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fail(err)
	}
	if _, err := os.Stat(abs); err != nil {
		fail(fmt.Errorf("drawbridge binary: %w (make build)", err))
	}
	if _, err := exec.LookPath(*haproxy); err != nil {
		fail(fmt.Errorf("HAProxy not found (make haproxy): %w", err))
	}
	ka, kaErr := exec.LookPath(*kaBin)
	kaVersion := ""
	if kaErr == nil {
		out, _ := exec.Command(ka, "--version").CombinedOutput()
		kaVersion = "keepalived"
		if f := strings.Fields(string(out)); len(f) >= 2 {
			kaVersion = f[0] + " " + f[1]
		}
	}
	// Leftovers of an earlier run that was killed.
	if err := netns.Cleanup(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-failover: cleaning up old labs:", err)
	}
	go onSignal()

	systems := []struct {
		name    string
		measure func(mode) (time.Duration, error)
	}{
		{"drawbridge", func(m mode) (time.Duration, error) { return measureDrawbridge(abs, m) }},
	}
	if kaErr == nil {
		systems = append(systems, struct {
			name    string
			measure func(mode) (time.Duration, error)
		}{kaVersion, func(m mode) (time.Duration, error) { return measureKeepalived(ka, m) }})
	} else {
		fmt.Printf("keepalived not found (%v): comparison skipped; apt-get install -y keepalived to add it\n", kaErr)
	}

	results := map[string]map[mode][]time.Duration{}
	start := time.Now()
	for _, s := range systems {
		results[s.name] = map[mode][]time.Duration{}
		for _, m := range []mode{unplanned, planned} {
			for i := 1; i <= *runs; i++ {
				d, err := s.measure(m)
				if err != nil {
					fail(fmt.Errorf("%s, %s failover, run %d: %w", s.name, m, i, err))
				}
				fmt.Printf("%-18s %-9s run %d: client outage %v\n", s.name, m, i, d.Round(time.Millisecond))
				results[s.name][m] = append(results[s.name][m], d)
			}
		}
	}

	fmt.Printf("\nclient-observed outage on the floating IP, median of %d runs (min–max); probe every 20 ms (%v in all)\n",
		*runs, time.Since(start).Round(time.Second))
	header := fmt.Sprintf("%-28s", "")
	for _, s := range systems {
		header += fmt.Sprintf("  %-26s", s.name)
	}
	fmt.Println(header + "  drawbridge target")
	for _, m := range []mode{unplanned, planned} {
		what, target := "unplanned (cable unplugged)", targetUnplanned
		if m == planned {
			what, target = "planned (SIGTERM)", targetPlanned
		}
		line := fmt.Sprintf("%-28s", what)
		for _, s := range systems {
			line += fmt.Sprintf("  %-26s", summary(results[s.name][m]))
		}
		med := median(results["drawbridge"][m])
		verdict := "met"
		if med > target {
			verdict = "MISSED"
		}
		fmt.Println(line + fmt.Sprintf("  ≤ %v (%s)", target, verdict))
	}
}

func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("%v (%v–%v)", median(ds).Round(time.Millisecond), s[0].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench-failover:", err)
	cleanupCurrent()
	os.Exit(1)
}

func logf(format string, args ...any) {
	if *verbose {
		fmt.Printf("  "+format+"\n", args...)
	}
}

// labTB lets the lab helpers, written for tests, run in this program: they
// call Helper, Logf, Errorf, Fatal(f) and Cleanup only. Fatal panics with a
// labFatal, which the measurement turns into an error; cleanups run in
// reverse order when the measurement ends (or on Ctrl-C).
type labTB struct {
	testing.TB // nil: a call to any other method panics

	mu       sync.Mutex
	cleanups []func()
	errs     []string
}

type labFatal struct{ msg string }

func (b *labTB) Helper()                      {}
func (b *labTB) Logf(format string, a ...any) { logf(format, a...) }
func (b *labTB) Log(a ...any)                 { logf("%s", fmt.Sprint(a...)) }
func (b *labTB) Errorf(format string, a ...any) {
	b.mu.Lock()
	b.errs = append(b.errs, fmt.Sprintf(format, a...))
	b.mu.Unlock()
}
func (b *labTB) Fatalf(format string, a ...any) { panic(labFatal{fmt.Sprintf(format, a...)}) }
func (b *labTB) Fatal(a ...any)                 { panic(labFatal{fmt.Sprint(a...)}) }
func (b *labTB) Cleanup(f func()) {
	b.mu.Lock()
	b.cleanups = append(b.cleanups, f)
	b.mu.Unlock()
}

// cleanup runs the registered cleanups once, last first.
func (b *labTB) cleanup() {
	b.mu.Lock()
	fs := b.cleanups
	b.cleanups = nil
	b.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
	for _, e := range b.errs {
		fmt.Fprintln(os.Stderr, "bench-failover: cleanup:", e)
	}
}

var (
	currentMu sync.Mutex
	current   *labTB
)

// withLab runs fn with a fresh labTB, turning a Fatal into an error and
// always running the cleanups.
func withLab(fn func(tb *labTB) (time.Duration, error)) (d time.Duration, err error) {
	tb := &labTB{}
	currentMu.Lock()
	current = tb
	currentMu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(labFatal)
			if !ok {
				panic(r)
			}
			err = errors.New(f.msg)
		}
		cleanupCurrent()
	}()
	return fn(tb)
}

func cleanupCurrent() {
	currentMu.Lock()
	tb := current
	current = nil
	currentMu.Unlock()
	if tb != nil {
		tb.cleanup()
	}
}

// onSignal tears the current lab down on Ctrl-C or SIGTERM, then exits.
func onSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
	fmt.Fprintln(os.Stderr, "bench-failover: interrupted; removing the lab")
	cleanupCurrent()
	os.Exit(130)
}

// bed is what both systems share: a lab with a backend and a client.
type bed struct {
	tb      *labTB
	lab     *netns.Lab
	vip     string
	backend *netns.Host
	client  *netns.Host
	a, b    *netns.Host
	probe   *netns.Prober
}

func newBed(tb *labTB) *bed {
	bd := &bed{tb: tb, lab: netns.NewLab(tb, "")}
	bd.backend = bd.lab.AddHost("backend")
	bd.client = bd.lab.AddHost("client")
	bd.a = bd.lab.AddHost("edge-a")
	bd.b = bd.lab.AddHost("edge-b")
	ln, err := bd.backend.Listen("tcp", net.JoinHostPort(bd.backend.IP, strconv.Itoa(backendPort)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", greeting)
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return bd
}

// holders lists the edge hosts carrying the floating IP.
func (bd *bed) holders() []*netns.Host {
	var out []*netns.Host
	for _, h := range []*netns.Host{bd.a, bd.b} {
		if h.HasAddr(bd.vip) {
			out = append(out, h)
		}
	}
	return out
}

// settle waits until exactly one edge host carries the floating IP and the
// client has been served without a failure for a second; it returns the
// holder.
func (bd *bed) settle(within time.Duration) (*netns.Host, error) {
	deadline := time.Now().Add(within)
	if bd.probe == nil {
		bd.probe = bd.client.Probe(net.JoinHostPort(bd.vip, strconv.Itoa(frontPort)),
			netns.ProbeConfig{Interval: 20 * time.Millisecond, Expect: greeting})
	}
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		hs := bd.holders()
		if len(hs) != 1 {
			continue
		}
		since := time.Now().Add(-time.Second)
		n, bad := 0, false
		for _, a := range bd.probe.Attempts() {
			if a.Start.After(since) {
				n++
				bad = bad || !a.OK
			}
		}
		if n >= 40 && !bad {
			return hs[0], nil
		}
	}
	return nil, fmt.Errorf("no steady holder of %s within %v (holders %v, outages %v)", bd.vip, within, bd.holders(), bd.probe.Outages())
}

// outage waits until the client is served again after an event at t0 (and
// for attempts in flight to land), then returns the longest outage that
// ended after t0.
// failover waits for one holder of the address, takes it away as m says
// (unplug its cable, or SIGTERM the process that moves the address, given by
// mover), and returns the outage the client saw.
func (bd *bed) failover(m mode, who string, mover func(*netns.Host) *proc) (time.Duration, error) {
	holder, err := bd.settle(30 * time.Second)
	if err != nil {
		return 0, err
	}
	logf("%s: %s holds %s", who, holder.Name, bd.vip)
	t0 := time.Now()
	switch m {
	case unplanned:
		if err := holder.Cut(); err != nil {
			return 0, err
		}
	case planned:
		if !mover(holder).signal(syscall.SIGTERM, 15*time.Second) {
			return 0, fmt.Errorf("%s on %s did not stop within 15s", who, holder.Name)
		}
	}
	return bd.outage(t0, 15*time.Second)
}

func (bd *bed) outage(t0 time.Time, within time.Duration) (time.Duration, error) {
	if err := bd.probe.WaitFor(true, within); err != nil {
		return 0, fmt.Errorf("the client did not recover: %w (outages %v)", err, bd.probe.Outages())
	}
	time.Sleep(600 * time.Millisecond) // the prober's attempt budget is 500 ms
	var longest time.Duration
	for _, w := range bd.probe.Outages() {
		if w.End.After(t0) && w.Duration() > longest {
			longest = w.Duration()
		}
	}
	return longest, nil
}

// proc is a process started in a host's namespace.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *strings.Builder
	mu     sync.Mutex
	exited chan struct{}
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

func start(tb *labTB, h *netns.Host, env []string, name string, args ...string) *proc {
	p := &proc{name: h.Name + "/" + filepath.Base(name), out: &strings.Builder{}, exited: make(chan struct{})}
	p.cmd = h.Command(context.Background(), name, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = lockedWriter{p}
	p.cmd.Stderr = lockedWriter{p}
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", p.name, err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	tb.Cleanup(func() { p.signal(syscall.SIGKILL, 5*time.Second) })
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal, within time.Duration) bool {
	if !p.running() {
		return true
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return true
	case <-time.After(within):
		return false
	}
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// measureDrawbridge forms a cluster of two edge agents and a witness, adds
// a route, waits for a steady holder and measures one failover.
func measureDrawbridge(bin string, m mode) (time.Duration, error) {
	return withLab(func(tb *labTB) (time.Duration, error) {
		bd := newBed(tb)
		w := bd.lab.AddHost("witness")
		bd.vip = bd.lab.NextAddr()
		hosts := []*netns.Host{bd.a, bd.b, w}
		agents := map[*netns.Host]*proc{}
		dirs := map[*netns.Host]string{}
		for _, h := range hosts {
			dir, err := os.MkdirTemp("", "drawbridge-bench-failover-")
			if err != nil {
				tb.Fatal(err)
			}
			dirs[h] = dir
			tb.Cleanup(func() { os.RemoveAll(dir) })
		}
		// After the agents are gone, stop the HAProxies they leave running
		// (the lab would kill them too).
		tb.Cleanup(func() {
			for _, h := range []*netns.Host{bd.a, bd.b} {
				killHAProxy(filepath.Join(dirs[h], "haproxy", "haproxy.pid"))
			}
		})
		hc := &http.Client{Timeout: 3 * time.Second,
			Transport: &http.Transport{DialContext: bd.client.DialContext, DisableKeepAlives: true}}
		for _, h := range hosts {
			args := []string{"agent",
				"--node-name", h.Name,
				"--data-dir", dirs[h],
				"--api-addr", net.JoinHostPort(h.IP, strconv.Itoa(apiPort)),
				"--raft-addr", net.JoinHostPort(h.IP, strconv.Itoa(raftPort)),
				"--gossip-addr", net.JoinHostPort(h.IP, strconv.Itoa(gossipPort)),
				"--bootstrap-expect", "3",
				"--haproxy-bind-address", "",
				"--haproxy-bin", *haproxy,
			}
			for _, o := range hosts {
				if o != h {
					args = append(args, "--join", net.JoinHostPort(o.IP, strconv.Itoa(gossipPort)))
				}
			}
			env := []string{"DRAWBRIDGE_API_TOKEN=" + token,
				"DRAWBRIDGE_RAFT_HEARTBEAT_TIMEOUT=500ms", "DRAWBRIDGE_RAFT_ELECTION_TIMEOUT=500ms",
				// A lab in namespaces of its own: no credentials needed.
				"DRAWBRIDGE_CLUSTER_INSECURE=true"}
			if h == w {
				args = append(args, "--witness")
			} else {
				prio := "100"
				if h == bd.b {
					prio = "50"
				}
				env = append(env, "DRAWBRIDGE_FLOATING_IP_PROVIDER=vip", "DRAWBRIDGE_FLOATING_IP_ADDRESS="+bd.vip,
					"DRAWBRIDGE_FLOATING_IP_INTERFACE="+h.Iface, "DRAWBRIDGE_FLOATING_IP_PRIORITY="+prio)
			}
			agents[h] = start(tb, h, env, bin, args...)
		}
		dump := func(err error) (time.Duration, error) {
			if *verbose {
				for _, h := range hosts {
					fmt.Printf("---- %s ----\n%s", h.Name, agents[h].logs())
				}
			}
			return 0, err
		}
		// The route, through any node (writes are forwarded to the leader),
		// once a leader exists.
		body, _ := json.Marshal(map[string]any{"name": "bench", "frontend-port": frontPort,
			"backend-port": backendPort, "dst-ip": bd.backend.IP, "action": "add"})
		deadline := time.Now().Add(30 * time.Second)
		for {
			req, _ := http.NewRequest("POST", fmt.Sprintf("http://%s/hooks/update-haproxy",
				net.JoinHostPort(bd.a.IP, strconv.Itoa(apiPort))), strings.NewReader(string(body)))
			req.Header.Set("X-Funkypenguin-Token", token)
			resp, err := hc.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			for _, h := range hosts {
				if !agents[h].running() {
					return dump(fmt.Errorf("agent %s exited:\n%s", h.Name, agents[h].logs()))
				}
			}
			if time.Now().After(deadline) {
				return dump(errors.New("the route was not accepted within 30s"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		d, err := bd.failover(m, "drawbridge", func(h *netns.Host) *proc { return agents[h] })
		if err != nil {
			return dump(err)
		}
		return d, nil
	})
}

// killHAProxy SIGKILLs the master named in pidFile and its workers.
func killHAProxy(pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	master, err := strconv.Atoi(strings.TrimSpace(strings.Split(string(b), "\n")[0]))
	if err != nil || master <= 0 {
		return
	}
	for _, pid := range procfs.Children(master) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(master, syscall.SIGKILL)
}

// haproxyConfig forwards the frontend port to the backend.
func haproxyConfig(backend string) string {
	return fmt.Sprintf(`global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind :%d
    default_backend be
backend be
    server s1 %s:%d
`, frontPort, backend, backendPort)
}

// keepalivedConfig is one VRRP instance over unicast to the peer.
func keepalivedConfig(self, peer *netns.Host, prio int, vip string) string {
	return fmt.Sprintf(`global_defs {
    router_id %s
    enable_script_security
}
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    interface %s
    virtual_router_id 51
    priority %d
    advert_int 1
    unicast_src_ip %s
    unicast_peer {
        %s
    }
    virtual_ipaddress {
        %s/32 dev %s
    }
}
`, self.Name, self.Iface, prio, self.IP, peer.IP, vip, self.Iface)
}

// measureKeepalived runs HAProxy and keepalived on both edge hosts, waits
// for a steady master and measures one failover.
func measureKeepalived(ka string, m mode) (time.Duration, error) {
	return withLab(func(tb *labTB) (time.Duration, error) {
		bd := newBed(tb)
		bd.vip = bd.lab.NextAddr()
		dir, err := os.MkdirTemp("", "keepalived-bench-failover-")
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { os.RemoveAll(dir) })
		kas := map[*netns.Host]*proc{}
		for _, h := range []*netns.Host{bd.a, bd.b} {
			peer, prio := bd.b, 150
			if h == bd.b {
				peer, prio = bd.a, 100
			}
			cfg := filepath.Join(dir, h.Name+"-haproxy.cfg")
			if err := os.WriteFile(cfg, []byte(haproxyConfig(bd.backend.IP)), 0o644); err != nil {
				tb.Fatal(err)
			}
			start(tb, h, nil, *haproxy, "-db", "-f", cfg)
			kcfg := filepath.Join(dir, h.Name+"-keepalived.conf")
			if err := os.WriteFile(kcfg, []byte(keepalivedConfig(h, peer, prio, bd.vip)), 0o644); err != nil {
				tb.Fatal(err)
			}
			kas[h] = start(tb, h, nil, ka, "-f", kcfg, "-P", "-n", "-l", "-D",
				"-p", filepath.Join(dir, h.Name+"-keepalived.pid"),
				"-r", filepath.Join(dir, h.Name+"-vrrp.pid"),
				"-c", filepath.Join(dir, h.Name+"-checkers.pid"),
				"-b", filepath.Join(dir, h.Name+"-bfd.pid"))
		}
		dump := func(err error) (time.Duration, error) {
			if *verbose {
				for h, p := range kas {
					fmt.Printf("---- %s keepalived ----\n%s", h.Name, p.logs())
				}
			}
			return 0, err
		}
		d, err := bd.failover(m, "keepalived", func(h *netns.Host) *proc { return kas[h] })
		if err != nil {
			return dump(err)
		}
		return d, nil
	})
}
