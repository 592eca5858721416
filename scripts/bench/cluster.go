package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/internal/pki"
	"github.com/drawbridge-lb/drawbridge/internal/procfs"
	"github.com/drawbridge-lb/drawbridge/internal/tlsutil"
)

// Options of the three-node runs (flags in main).
var (
	// writesOnly stops a run after the sustained writes.
	writesOnly bool
	// cpuProfile, when set, is where the leader's CPU profile of the
	// sustained writes goes (and the followers' beside it).
	cpuProfile string
	// tlsDirs are the CAs and certificates of secure runs, removed when
	// the run ends.
	tlsDirs []string
)

// startCluster starts three agents on loopback with default raft timings,
// frontends bound to 127.0.1.1-3, formed by bootstrap-expect. secure runs
// the shipped setup: a CA and node certificates, raft mutual TLS, gossip
// encryption and the API over HTTPS (the bench's clients trust the CA);
// otherwise the cluster runs with cluster.insecure and plain HTTP.
func startCluster(bin string, secure bool) ([]*agent, error) {
	var gossip []string
	for i := 0; i < 3; i++ {
		gossip = append(gossip, fmt.Sprintf("127.0.0.1:%d", freePort()))
	}
	names := []string{"edge-1", "edge-2", "edge-3"}
	var creds map[string]pki.NodeCreds
	gossipKey := make([]byte, 32)
	if secure {
		dir, err := os.MkdirTemp("", "drawbridge-bench-tls-")
		if err != nil {
			return nil, err
		}
		tlsDirs = append(tlsDirs, dir)
		if creds, err = pki.CreateCluster(dir, nil, names...); err != nil {
			return nil, err
		}
		pool, err := tlsutil.CAPool(creds[names[0]].CAFile)
		if err != nil {
			return nil, err
		}
		if _, err := crand.Read(gossipKey); err != nil {
			return nil, err
		}
		http.DefaultTransport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	var agents []*agent
	for i := 0; i < 3; i++ {
		dir, err := os.MkdirTemp("", "drawbridge-bench-")
		if err != nil {
			return nil, err
		}
		a := &agent{dir: dir, api: fmt.Sprintf("127.0.0.1:%d", freePort()), https: secure,
			env: []string{"DRAWBRIDGE_HAPROXY_DYNAMIC_PORTS=" + dynamicRange}}
		if cpuProfile != "" {
			a.pprof = fmt.Sprintf("127.0.0.1:%d", freePort())
			a.env = append(a.env, "DRAWBRIDGE_DEBUG_PPROF_ADDR="+a.pprof)
		}
		if secure {
			c := creds[names[i]]
			a.env = append(append(a.env, c.Env()...), "DRAWBRIDGE_GOSSIP_KEY="+base64.StdEncoding.EncodeToString(gossipKey),
				"DRAWBRIDGE_API_TLS_CERT_FILE="+c.CertFile, "DRAWBRIDGE_API_TLS_KEY_FILE="+c.KeyFile)
		} else {
			a.env = append(a.env, "DRAWBRIDGE_CLUSTER_INSECURE=true")
		}
		cfgFile := filepath.Join(dir, "bench.yaml") // empty: no /etc/drawbridge file applies
		if err := os.WriteFile(cfgFile, nil, 0o600); err != nil {
			return nil, err
		}
		a.args = []string{"agent", "--config", cfgFile, "--node-name", fmt.Sprintf("edge-%d", i+1), "--data-dir", dir,
			"--api-addr", a.api, "--raft-addr", fmt.Sprintf("127.0.0.1:%d", freePort()),
			"--gossip-addr", gossip[i], "--bootstrap-expect", "3",
			"--haproxy-bind-address", fmt.Sprintf("127.0.1.%d", i+1)}
		for j, g := range gossip {
			if j != i {
				a.args = append(a.args, "--join", g)
			}
		}
		if err := a.launch(bin); err != nil {
			return nil, err
		}
		agents = append(agents, a)
	}
	for _, a := range agents {
		if err := a.waitReady(); err != nil {
			for _, b := range agents {
				b.stop()
			}
			return nil, err
		}
	}
	return agents, nil
}

func (a *agent) running() bool { return a.cmd.ProcessState == nil }

func (a *agent) isLeader() bool {
	req, _ := http.NewRequest("GET", a.url()+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var st struct {
		Raft struct {
			State string `json:"state"`
		} `json:"raft"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.Raft.State == "Leader"
}

func leaderOf(agents []*agent) *agent {
	for _, a := range agents {
		if a.running() && a.isLeader() {
			return a
		}
	}
	return nil
}

// writeBackend is the backend address of the sustained writes, on a port
// from 1 to writeBackendPorts. It is on loopback, so HAProxy's health
// checks of it never leave the machine; nothing listens there, and the
// ports stay below the dynamic ranges and the members' (ephemeral) ports,
// which the backend policy refuses on loopback.
const (
	writeBackend      = "127.0.0.2"
	writeBackendPorts = 20000
)

// put upserts route port with one backend; it reports whether it committed.
func (a *agent) put(client *http.Client, port, backendPort int) bool {
	body, _ := json.Marshal(map[string]any{"name": "r" + strconv.Itoa(port),
		"backends": []map[string]any{{"address": writeBackend, "port": backendPort}}})
	req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/v1/routes/%d", a.url(), port), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	// Read the answer to its end: a body closed unread closes the
	// connection, and every write would pay a new one (and under TLS a
	// handshake), which no real client does.
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

// clusterFigures are one run's results, for the TLS on/off comparison.
type clusterFigures struct {
	// writes is committed writes/s of the sustained writes, per path.
	writes map[string]float64
	// live is webhook -> live on all three HAProxies, p50 and p99, per path.
	live map[string][2]time.Duration
}

// runClusters runs the three-node benchmark once per TLS setting asked
// (both: plain first, then TLS, one after the other on the same machine)
// and prints the cost of TLS when both ran.
func runClusters(bin, which string) error {
	figs := map[bool]clusterFigures{}
	for _, secure := range []bool{false, true} {
		if (which == "on" && !secure) || (which == "off" && secure) {
			continue
		}
		f, err := runCluster(bin, secure)
		if err != nil {
			return err
		}
		figs[secure] = f
	}
	off, okOff := figs[false]
	on, okOn := figs[true]
	if !okOff || !okOn {
		return nil
	}
	fmt.Printf("\ncost of TLS (raft mutual TLS + gossip encryption + HTTPS API, against none; same binary, one run after the other):\n")
	for _, path := range []benchPath{oldPath(), newPath()} {
		a, b := off.writes[path.name], on.writes[path.name]
		fmt.Printf("  committed writes/s, 64 clients, %-8s off %6.0f   on %6.0f   (%+.1f%%)\n", path.name+":", a, b, 100*(b-a)/a)
	}
	for _, path := range []benchPath{oldPath(), newPath()} {
		a, b := off.live[path.name], on.live[path.name]
		fmt.Printf("  webhook -> live on all 3, %-8s p50 off %s  on %s   p99 off %s  on %s\n", path.name+":", ms(a[0]), ms(b[0]), ms(a[1]), ms(b[1]))
	}
	return nil
}

func runCluster(bin string, secure bool) (clusterFigures, error) {
	figs := clusterFigures{writes: map[string]float64{}, live: map[string][2]time.Duration{}}
	bport, stopBackend := startBackend()
	defer stopBackend()
	defer func() {
		for _, d := range tlsDirs {
			os.RemoveAll(d)
		}
		tlsDirs = nil
	}()
	agents, err := startCluster(bin, secure)
	if err != nil {
		return figs, err
	}
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	setting := "TLS off: cluster.insecure, plain HTTP"
	if secure {
		setting = "TLS on: raft mutual TLS, gossip encryption, HTTPS API"
	}
	fmt.Printf("\ndrawbridge three-node benchmark (3 agents + 3 HAProxies on loopback, default raft timings, fsync on; %s)\n", setting)

	// Sustained writes: 64 clients, random nodes (followers forward), 5 s,
	// on each path; then 64 drawbridge clients, which follow the leader.
	// The leader kills below keep writing to the old path's ports.
	var ports []int
	for _, path := range []benchPath{oldPath(), newPath()} {
		pp := path.ports(200)
		if path.name == "old" {
			ports = pp
		}
		w, err := sustainedWrites(agents, path, pp, secure, false)
		if err != nil {
			return figs, err
		}
		figs.writes[path.name] = w
	}
	for _, path := range []benchPath{oldPath(), newPath()} {
		if _, err := sustainedWrites(agents, path, path.ports(200), secure, true); err != nil {
			return figs, err
		}
	}
	if writesOnly {
		return figs, nil
	}

	// Webhook -> live on all three HAProxies, posted to random nodes, on
	// each path.
	for _, path := range []benchPath{oldPath(), newPath()} {
		fmt.Printf("-- %s\n", path.label)
		p50, p99, err := clusterLive(agents, path, bport)
		if err != nil {
			return figs, err
		}
		figs.live[path.name] = [2]time.Duration{p50, p99}
		leader := leaderOf(agents)
		if leader == nil {
			return figs, fmt.Errorf("no leader")
		}
		if err := breakdown(leader, agents, path, bport, 20); err != nil {
			return figs, err
		}
	}
	return figs, clusterKill(bin, agents, ports)
}

// clusterLive times webhook -> live on all three HAProxies; it returns the
// p50 and p99.
func clusterLive(agents []*agent, path benchPath, bport int) (time.Duration, time.Duration, error) {
	var lat []time.Duration
	var reloads0 uint64
	for _, a := range agents {
		reloads0 += a.reloads()
	}
	for i, port := range path.ports(50) {
		a := agents[i%3]
		t0 := time.Now()
		code, err := a.hook(fmt.Sprintf("%s-live-%d", path.name, i), port, bport)
		if err != nil || code != 200 {
			return 0, 0, fmt.Errorf("add %d: %d %v", i, code, err)
		}
		for n := 1; n <= 3; n++ {
			host := fmt.Sprintf("127.0.1.%d", n)
			deadline := time.Now().Add(10 * time.Second)
			for !liveAt(host, port) {
				if time.Now().After(deadline) {
					return 0, 0, fmt.Errorf("add %d never went live on %s", i, host)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		lat = append(lat, time.Since(t0))
	}
	var reloads uint64
	for _, a := range agents {
		// The last reload is confirmed a moment after its worker answers.
		if err := waitApplied(a, time.Minute); err != nil {
			return 0, 0, err
		}
		reloads += a.reloads()
	}
	fmt.Printf("webhook -> route live on all three HAProxies, 50 sequential adds: p50 %s  p99 %s  max %s  (%d HAProxy reloads on the three nodes)\n",
		ms(pct(lat, .5)), ms(pct(lat, .99)), ms(slices.Max(lat)), reloads-reloads0)
	return pct(lat, .5), pct(lat, .99), nil
}

// clusterKill times leader kill -9 -> first committed write, three times.
func clusterKill(bin string, agents []*agent, ports []int) error {

	// Leader kill -9 -> first committed write, three times.
	var kills []time.Duration
	wclient := &http.Client{Timeout: time.Second}
	for trial := 0; trial < 3; trial++ {
		leader := leaderOf(agents)
		if leader == nil {
			return fmt.Errorf("no leader before kill %d", trial)
		}
		t0 := time.Now()
		leader.cmd.Process.Kill()
		leader.cmd.Wait()
		var first time.Duration
		for i := 0; first == 0; i++ {
			if time.Since(t0) > 30*time.Second {
				return fmt.Errorf("no write committed within 30s of killing the leader")
			}
			for _, a := range agents {
				if a.running() && a.put(wclient, ports[i%len(ports)], 1+i) {
					first = time.Since(t0)
					break
				}
			}
		}
		kills = append(kills, first)
		if err := leader.launch(bin); err != nil {
			return err
		}
		if err := leader.waitReady(); err != nil {
			return err
		}
		time.Sleep(2 * time.Second) // let it rejoin fully before the next kill
	}
	slices.Sort(kills)
	fmt.Printf("leader kill -9 -> first committed write (3 trials): median %v  (all: %v)\n", kills[1].Round(time.Millisecond), roundAll(kills))
	return nil
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(time.Millisecond)
	}
	return out
}

// profileFile is where a run's leader profile of path's writes goes: FILE
// for the old path without TLS and plain clients, then ".new", ".tls" and
// ".follow" added as they apply.
func profileFile(path benchPath, secure, follow bool) string {
	f := cpuProfile
	if path.name != "old" {
		f += "." + path.name
	}
	if secure {
		f += ".tls"
	}
	if follow {
		f += ".follow"
	}
	return f
}

// cpuUse is the CPU time used so far by each agent, by the children they
// waited for (haproxy -c), by their HAProxies (masters, the workers they
// reaped, live workers) and by this process.
type cpuUse struct {
	agents                 []time.Duration
	checks, haproxy, bench time.Duration
}

func cpuSplit(agents []*agent) cpuUse {
	var out cpuUse
	for _, a := range agents {
		self, kids, _ := procfs.CPUTimes(a.cmd.Process.Pid)
		out.agents = append(out.agents, self)
		out.checks += kids
		master := haproxyMaster(a.dir)
		if master <= 0 {
			continue
		}
		self, kids, _ = procfs.CPUTimes(master)
		out.haproxy += self + kids
		for _, w := range procfs.Children(master) {
			self, _, _ := procfs.CPUTimes(w)
			out.haproxy += self
		}
	}
	out.bench, _ = procfs.CPUTime(os.Getpid())
	return out
}

// sustainedWrites runs 64 clients for 5 s, each putting a route with one
// backend (a new backend port every time) on one of ports (path's), and
// prints committed writes/s, the machine's CPU per write and what HAProxy
// did meanwhile. The first write to each port adds its route; the rest
// change its backend. Plain clients send every write to a random node, as
// a shell recipe's curl does, and followers forward two in three; with
// follow, each is a drawbridge client (api/client) whose members start at
// a random node, and which sends its writes to the leader once an answer
// has named it.
func sustainedWrites(agents []*agent, path benchPath, ports []int, secure, follow bool) (float64, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	hc := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	clients := "64 clients to random nodes"
	if follow {
		clients = "64 drawbridge clients that follow the leader"
	}
	var ok, failed atomic.Int64
	counts := func() (reloads, runtime uint64) {
		for _, a := range agents {
			r, u := a.haproxyCounts()
			reloads, runtime = reloads+r, runtime+u
		}
		return reloads, runtime
	}
	reloads0, runtime0 := counts()
	busy0, busyErr := procfs.MachineBusy()
	split0 := cpuSplit(agents)
	stop := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	for c := 0; c < 64; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			put := func(port, backendPort int) bool {
				return agents[rng.IntN(3)].put(hc, port, backendPort)
			}
			if follow {
				put = followingPut(agents, rng.IntN(len(agents)), hc)
			}
			for time.Now().Before(stop) {
				if put(ports[rng.IntN(len(ports))], 1+rng.IntN(writeBackendPorts)) {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}(c)
	}
	start := time.Now()
	profErr := make(chan error, 1)
	if cpuProfile != "" {
		go func() { profErr <- profileAgents(agents, profileFile(path, secure, follow)) }()
	}
	wg.Wait()
	elapsed := time.Since(start)
	busy1, err := procfs.MachineBusy()
	writes := float64(ok.Load()) / elapsed.Seconds()
	fmt.Printf("sustained writes, %s, %s: %.0f committed writes/s (%d ok, %d failed in %v)\n",
		clients, path.short, writes, ok.Load(), failed.Load(), elapsed.Round(time.Millisecond))
	if busyErr == nil && err == nil && ok.Load() > 0 {
		// CPU per write is steadier than writes/s on a shared VM: time
		// stolen by the host lowers the rate, not the work per write.
		fmt.Printf("  machine CPU per committed write: %d us (user+system on all cores, everything on the machine; steal left out)\n",
			(busy1-busy0).Microseconds()/ok.Load())
		// Below about 95 % the run was not bound by CPU alone: the 64
		// clients spent part of it waiting (disk, the leader's loop).
		fmt.Printf("  the machine was busy %.0f %% of its %d CPUs' time during the run\n",
			100*(busy1-busy0).Seconds()/(elapsed.Seconds()*float64(runtime.NumCPU())), runtime.NumCPU())
		split1 := cpuSplit(agents)
		per := func(d time.Duration) int64 { return d.Microseconds() / ok.Load() }
		var each []string
		var all time.Duration
		for i, a := range agents {
			d := split1.agents[i] - split0.agents[i]
			all += d
			role := ""
			if a.isLeader() {
				role = " leader"
			}
			each = append(each, fmt.Sprintf("%d%s", per(d), role))
		}
		fmt.Printf("    of which the three agents %d us (%s), their haproxy -c checks %d us, the three HAProxies %d us, this bench client %d us\n",
			per(all), strings.Join(each, ", "), per(split1.checks-split0.checks), per(split1.haproxy-split0.haproxy), per(split1.bench-split0.bench))
	}
	reloads, runtime := counts()
	fmt.Printf("  on the three nodes meanwhile: %d HAProxy reloads, %d runtime API updates\n", reloads-reloads0, runtime-runtime0)
	var rss []string
	for _, a := range agents {
		rss = append(rss, mb(procRSS(a.cmd.Process.Pid)))
	}
	fmt.Printf("  agents' resident memory after: %s\n", strings.Join(rss, ", "))
	if cpuProfile != "" {
		if err := <-profErr; err != nil {
			return writes, err
		}
		fmt.Printf("  CPU profiles of these writes: %s (leader), %[1]s.follower-1 and -2\n", profileFile(path, secure, follow))
	}
	return writes, nil
}

// followingPut returns a put through a drawbridge client whose members are
// the agents, starting at first.
func followingPut(agents []*agent, first int, hc *http.Client) func(port, backendPort int) bool {
	var members []string
	for i := range agents {
		members = append(members, agents[(first+i)%len(agents)].url())
	}
	c, err := client.New(client.Config{Members: members, Token: token, HTTPClient: hc})
	if err != nil {
		panic(err) // the members and token are the bench's own
	}
	return func(port, backendPort int) bool {
		_, err := c.PutRoute(context.Background(), port, client.RouteSpec{Name: "r" + strconv.Itoa(port),
			Backends: []client.BackendSpec{{Address: writeBackend, Port: backendPort}}})
		return err == nil
	}
}

// profileAgents fetches a 4 s CPU profile from every agent's loopback pprof
// listener at once, starting half a second into the sustained writes: the
// leader's goes to file, the followers' to file.follower-1 and -2.
func profileAgents(agents []*agent, file string) error {
	time.Sleep(500 * time.Millisecond)
	leader := leaderOf(agents)
	if leader == nil {
		return fmt.Errorf("cpu profile: no leader")
	}
	errs := make(chan error, len(agents))
	n := 0
	for _, a := range agents {
		name := file
		if a != leader {
			n++
			name = fmt.Sprintf("%s.follower-%d", file, n)
		}
		go func() { errs <- fetchProfile(a, name) }()
	}
	var first error
	for range agents {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func fetchProfile(a *agent, file string) error {
	resp, err := http.Get("http://" + a.pprof + "/debug/pprof/profile?seconds=4")
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	return os.WriteFile(file, b, 0o644)
}
