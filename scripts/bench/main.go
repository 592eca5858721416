// Command bench measures drawbridge end to end with the built binary: a dev
// agent with its own HAProxy on loopback, a local TCP backend, and webhook
// posts timed until the route answers through HAProxy. It prints figures; it
// asserts nothing. Run it with `make bench` (modes single and cluster),
// `make bench-scale` (mode scale) and `make bench-longlived` (mode
// longlived).
//
// Every figure of a route change is measured twice in the same run: on
// ports outside the dynamic range (the path every route took before it:
// render, haproxy -c, reload) and on ports inside it (runtime API, no
// reload).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// token is an obviously fake token for the local benchmark agent.
const token = "bench-token-not-a-secret-000"

func main() {
	bin := flag.String("bin", "bin/drawbridge", "drawbridge binary")
	seq := flag.Int("sequential", 100, "sequential adds")
	conc := flag.Int("concurrent", 500, "adds in the concurrent run")
	clients := flag.Int("clients", 32, "concurrent clients")
	mode := flag.String("mode", "all", "single, cluster, all (single and cluster), scale or longlived")
	tlsMode := flag.String("tls", "both", "three-node runs: off, on, or both (the cost of TLS, one after the other)")
	flag.StringVar(&dynamicRange, "dynamic", dynamicRange, `haproxy.dynamic_ports of the agents (the new path's ports); "auto" picks a free one`)
	sizes := flag.String("sizes", "1000,5000,10000", "route counts of -mode scale")
	flag.IntVar(&scaleRounds, "rounds", scaleRounds, "-mode scale: rounds of one more route and one more backend at each size")
	flag.BoolVar(&writesOnly, "writes-only", false, "three-node runs: measure the sustained writes only (no webhook -> live, no leader kills)")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "three-node runs: write the leader's CPU profile during the sustained writes to this file, the followers' to FILE.follower-1 and -2 (agents serve debug.pprof_addr on loopback); with -tls both, \".tls\" is added to the TLS run's files")
	flag.Parse()
	raiseNoFile()
	if *mode != "scale" {
		pickRange()
	}
	switch *mode {
	case "scale":
		if err := runScale(*bin, *sizes); err != nil {
			fmt.Fprintln(os.Stderr, "bench scale:", err)
			os.Exit(1)
		}
		return
	case "longlived":
		if err := runLongLived(*bin); err != nil {
			fmt.Fprintln(os.Stderr, "bench longlived:", err)
			os.Exit(1)
		}
		return
	}
	if *mode == "single" || *mode == "all" {
		if err := run(*bin, *seq, *conc, *clients); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	if *mode == "cluster" || *mode == "all" {
		if err := runClusters(*bin, *tlsMode); err != nil {
			fmt.Fprintln(os.Stderr, "bench cluster:", err)
			os.Exit(1)
		}
	}
}

type agent struct {
	dir string
	api string
	// https serves the API over TLS (the secure cluster run).
	https bool
	// pprof is the loopback address of the agent's profiles ("" when off).
	pprof string
	args  []string
	env   []string
	cmd   *exec.Cmd
	logs  syncBuffer
}

// syncBuffer is a bytes.Buffer the agent's output goroutines and the bench
// may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 {
		s.b.Reset() // keep the tail only
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// url is the agent's API base URL.
func (a *agent) url() string {
	if a.https {
		return "https://" + a.api
	}
	return "http://" + a.api
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// benchLimits lift what would refuse a benchmark's own load: the per-token
// rate limit, the route and backend caps (bench-scale goes to 10,000
// routes) and, for the non-dev cluster agents, backends on loopback.
var benchLimits = []string{"DRAWBRIDGE_LIMITS_RATE=0", "DRAWBRIDGE_LIMITS_MAX_ROUTES=50000",
	"DRAWBRIDGE_LIMITS_MAX_BACKENDS=200000", "DRAWBRIDGE_ROUTES_ALLOW_LOOPBACK_BACKENDS=true"}

// startAgent starts a dev agent; env adds DRAWBRIDGE_* settings.
func startAgent(bin string, env ...string) (*agent, error) {
	dir, err := os.MkdirTemp("", "drawbridge-bench-")
	if err != nil {
		return nil, err
	}
	a := &agent{dir: dir, api: fmt.Sprintf("127.0.0.1:%d", freePort()), env: env}
	// An empty config file of its own: a /etc/drawbridge/drawbridge.yaml
	// on this machine must not change what is measured.
	cfgFile := filepath.Join(dir, "bench.yaml")
	if err := os.WriteFile(cfgFile, nil, 0o600); err != nil {
		return nil, err
	}
	a.args = []string{"agent", "--dev", "--config", cfgFile, "--data-dir", dir, "--node-name", "bench",
		"--api-addr", a.api,
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", freePort()),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", freePort())}
	if err := a.launch(bin); err != nil {
		return nil, err
	}
	if err := a.waitReady(); err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

func (a *agent) launch(bin string) error {
	a.logs.Reset()
	a.cmd = exec.Command(bin, a.args...)
	// Benchmarks measure throughput: no per-token rate limit nor caps
	// (a.env may set its own).
	env := append(append(os.Environ(), "DRAWBRIDGE_API_TOKEN="+token), benchLimits...)
	a.cmd.Env = append(env, a.env...)
	a.cmd.Stdout, a.cmd.Stderr = &a.logs, &a.logs
	return a.cmd.Start()
}

func (a *agent) waitReady() error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(a.url() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 && a.leader() != "" {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("agent not ready:\n%s", a.logs.String())
}

func (a *agent) stop() {
	if a.cmd.ProcessState == nil {
		a.cmd.Process.Signal(syscall.SIGTERM)
		a.cmd.Wait()
	}
	if pid := haproxyMaster(a.dir); pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	time.Sleep(200 * time.Millisecond)
	os.RemoveAll(a.dir)
}

func (a *agent) hook(name string, fport, bport int) (int, error) {
	return a.hookQuery(name, fport, bport, "")
}

func (a *agent) hookQuery(name string, fport, bport int, query string) (int, error) {
	body, _ := json.Marshal(map[string]any{
		"name": name, "frontend-port": fport, "backend-port": bport, "dst-ip": "127.0.0.1", "action": "add",
	})
	req, _ := http.NewRequest("POST", a.url()+"/hooks/update-haproxy"+query, bytes.NewReader(body))
	req.Header.Set("X-Funkypenguin-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// statusText returns /v1/status as text, for error reports.
func (a *agent) statusText() string {
	req, _ := http.NewRequest("GET", a.url()+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 800 {
		b = append(b[:800], "..."...)
	}
	return string(b)
}

// leader returns the raft leader the agent knows, "" when none.
func (a *agent) leader() string {
	req, _ := http.NewRequest("GET", a.url()+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var st struct {
		Raft struct {
			Leader string `json:"leader"`
		} `json:"raft"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.Raft.Leader
}

func (a *agent) reloads() uint64 {
	reloads, _ := a.haproxyCounts()
	return reloads
}

// haproxyCounts returns the agent's HAProxy reloads and runtime API
// updates so far.
func (a *agent) haproxyCounts() (reloads, runtime uint64) {
	req, _ := http.NewRequest("GET", a.url()+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	var st struct {
		HAProxy struct {
			Reloads        uint64 `json:"reloads"`
			RuntimeUpdates uint64 `json:"runtime_updates"`
		} `json:"haproxy"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.HAProxy.Reloads, st.HAProxy.RuntimeUpdates
}

// backend greets each connection with "ok".
func startBackend() (int, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, func() { ln.Close() }
}

// live reports whether a connection through HAProxy reaches the backend.
func live(port int) bool { return liveAt("127.0.0.1", port) }

func liveAt(host string, port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", host, port), 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "ok\n"
}

func waitLive(port int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if live(port) {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// nextPort walks a range below the kernel's ephemeral ports, so no outgoing
// connection (HAProxy's health checks, our own HTTP clients) can be holding a
// port we are about to route.
var nextPort = 20000

// freePorts returns n distinct ports that are free now.
func freePorts(n int) []int {
	var out []int
	for len(out) < n && nextPort < 32000 {
		p := nextPort
		nextPort++
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			ln.Close()
			out = append(out, p)
		}
	}
	return out
}

func run(bin string, seq, conc, clients int) error {
	bport, stopBackend := startBackend()
	defer stopBackend()
	a, err := startAgent(bin, "DRAWBRIDGE_HAPROXY_DYNAMIC_PORTS="+dynamicRange)
	if err != nil {
		return err
	}
	defer a.stop()

	fmt.Printf("drawbridge end-to-end benchmark (single dev node, HAProxy master-worker, loopback; dynamic range %s)\n", dynamicRange)
	for _, path := range []benchPath{oldPath(), newPath()} {
		fmt.Printf("\n-- %s\n", path.label)
		if err := runPath(a, path, bport, seq, conc, clients); err != nil {
			return err
		}
	}
	return nil
}

// runPath runs the single-node figures on one path's ports.
func runPath(a *agent, path benchPath, bport, seq, conc, clients int) error {
	// Sequential: post, then time until a connection through HAProxy works.
	var lat []time.Duration
	reloads0 := a.reloads()
	for i, port := range path.ports(seq) {
		start := time.Now()
		code, err := a.hook(fmt.Sprintf("%s-seq-%d", path.name, i), port, bport)
		if err != nil || code != 200 {
			return fmt.Errorf("sequential add %d: %d %v", i, code, err)
		}
		if !waitLive(port, 10*time.Second) {
			return fmt.Errorf("sequential add %d: port %d never went live; status: %s", i, port, a.statusText())
		}
		lat = append(lat, time.Since(start))
	}
	// A reload is confirmed a moment after the new worker answers: wait for
	// the last one, so it is counted here and not in the next phase.
	if err := waitApplied(a, time.Minute); err != nil {
		return err
	}
	fmt.Printf("webhook -> route live, %d sequential adds: p50 %v  p99 %v  max %v  (%d HAProxy reloads)\n",
		seq, ms(pct(lat, .5)), ms(pct(lat, .99)), ms(slices.Max(lat)), a.reloads()-reloads0)

	if err := breakdown(a, []*agent{a}, path, bport, 20); err != nil {
		return err
	}

	// Concurrent: many clients post at once; count reloads, check every 2xx goes live.
	before := a.reloads()
	ports := path.ports(conc)
	var mu sync.Mutex
	var acked []int
	var failures int
	start := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				code, err := a.hook(fmt.Sprintf("%s-conc-%d", path.name, i), ports[i], bport)
				mu.Lock()
				if err == nil && code == 200 {
					acked = append(acked, ports[i])
				} else {
					failures++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range ports {
		work <- i
	}
	close(work)
	wg.Wait()
	posted := time.Since(start)
	notLive := 0
	for _, p := range acked {
		if !waitLive(p, 30*time.Second) {
			notLive++
		}
	}
	allLive := time.Since(start)
	if err := waitApplied(a, time.Minute); err != nil {
		return err
	}
	fmt.Printf("%d adds from %d concurrent clients: %d acknowledged, %d failed; all posted in %v; all live in %v; %d HAProxy reloads; %d acknowledged routes never went live\n",
		conc, clients, len(acked), failures, posted.Round(time.Millisecond), allLive.Round(time.Millisecond), a.reloads()-before, notLive)
	return nil
}
