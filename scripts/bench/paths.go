package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
)

// dynamicRange is haproxy.dynamic_ports for the agents the bench starts;
// "auto" picks the first of autoRanges nothing on this machine listens in.
var dynamicRange = "auto"

var autoRanges = []string{"30000-32767", "26000-28767", "22500-25267"}

// pickRange resolves "auto": other agents' HAProxies on a shared machine
// may hold the default range on 127.0.0.1, or on the 127.0.1.x addresses
// the three-node run binds (a range held there leaves every port of it a
// hole the agents probe again at each reload, which is not what is being
// measured).
func pickRange() {
	if dynamicRange != "auto" {
		return
	}
	for _, r := range autoRanges {
		first, last := parseRange(r)
		free := true
		for p := first; p <= last && free; p++ {
			for _, host := range []string{"127.0.0.1", "127.0.1.1", "127.0.1.2", "127.0.1.3"} {
				ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", host, p))
				if err != nil {
					free = false
					break
				}
				ln.Close()
			}
		}
		if free {
			dynamicRange = r
			return
		}
		fmt.Printf("(dynamic range %s is in use on this machine; trying another)\n", r)
	}
	dynamicRange = autoRanges[0]
}

// benchPath is one way a route change reaches HAProxy, told apart by the
// ports its routes use.
type benchPath struct {
	// short names the path in a sentence ("200 ports outside ...").
	name, label, short string
	ports              func(n int) []int
}

// oldPath routes ports outside the dynamic range: render, haproxy -c and a
// reload for every change (what every route did before the range).
func oldPath() benchPath {
	return benchPath{name: "old", label: "old path: ports outside the dynamic range (render, haproxy -c, reload)",
		short: "200 ports outside the dynamic range", ports: freePorts}
}

// nextDynamic walks the dynamic range; HAProxy binds all of it, so its
// ports cannot be probed.
var nextDynamic = 0

// newPath routes ports inside the dynamic range: runtime API, no reload.
func newPath() benchPath {
	return benchPath{name: "new", label: "new path: ports inside the dynamic range " + dynamicRange + " (runtime API, no reload)",
		short: "200 ports inside the dynamic range",
		ports: func(n int) []int {
			first, last := parseRange(dynamicRange)
			if nextDynamic < first {
				nextDynamic = first
			}
			var out []int
			for len(out) < n && nextDynamic <= last {
				out = append(out, nextDynamic)
				nextDynamic++
			}
			return out
		}}
}

func parseRange(r string) (int, int) {
	a, b, _ := strings.Cut(r, "-")
	first, _ := strconv.Atoi(a)
	last, _ := strconv.Atoi(b)
	return first, last
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(100 * time.Microsecond).String()
	}
}

// raiseNoFile raises this process's descriptor limit (inherited by the
// agents and the HAProxies they start) as far as it is allowed: 10,000
// routes need more than 20,000 descriptors.
func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return
	}
	want := uint64(200_000)
	if l.Cur >= want {
		return
	}
	n := l
	n.Cur, n.Max = want, max(want, l.Max)
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &n) != nil {
		n.Cur, n.Max = l.Max, l.Max // not root: the hard limit is the most
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &n)
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	fmt.Printf("descriptor limit for the agents and their HAProxies: %d\n", l.Cur)
}

// nodeStatus is the part of /v1/status the bench reads.
type nodeStatus struct {
	Raft struct {
		State        string `json:"state"`
		Leader       string `json:"leader"`
		AppliedIndex uint64 `json:"applied_index"`
	} `json:"raft"`
	State struct {
		Index  uint64 `json:"index"`
		Routes int    `json:"routes"`
	} `json:"state"`
	HAProxy struct {
		Running      bool   `json:"running"`
		AppliedIndex uint64 `json:"applied_index"`
		Reloads      uint64 `json:"reloads"`
		LastError    string `json:"last_error"`
		Workers      struct {
			OldWorkers        int    `json:"old_workers"`
			OldWorkerConns    int    `json:"old_worker_connections"`
			OldWorkersRSS     uint64 `json:"old_workers_resident_bytes"`
			Budget            uint64 `json:"old_workers_budget_bytes"`
			OldWorkersStopped uint64 `json:"old_workers_stopped"`
			ConnsClosed       uint64 `json:"old_worker_connections_closed"`
		} `json:"workers"`
	} `json:"haproxy"`
}

var statusClient = &http.Client{Timeout: 5 * time.Second}

func (a *agent) status() (nodeStatus, error) {
	var st nodeStatus
	req, _ := http.NewRequest("GET", a.url()+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := statusClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// metricSums reads the _sum and _count of the named histograms (and plain
// counters) from /metrics.
func (a *agent) metricSums(names ...string) map[string][2]float64 {
	out := map[string][2]float64{}
	req, _ := http.NewRequest("GET", a.url()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := statusClient.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		for _, n := range names {
			cur := out[n]
			switch f[0] {
			case n + "_sum":
				cur[0] = v
			case n + "_count":
				cur[1] = v
			case n:
				cur[0], cur[1] = v, 1
			default:
				continue
			}
			out[n] = cur
		}
	}
	return out
}

// phaseMetrics are the HAProxy manager's histograms of where an apply
// spends its time.
var phaseMetrics = []struct{ name, label string }{
	{"drawbridge_haproxy_render_duration_seconds", "render"},
	{"drawbridge_haproxy_validation_duration_seconds", "haproxy -c"},
	{"drawbridge_haproxy_reload_duration_seconds", "reload+confirm"},
	{"drawbridge_haproxy_runtime_update_duration_seconds", "runtime API"},
}

func phaseNames() []string {
	var out []string
	for _, p := range phaseMetrics {
		out = append(out, p.name)
	}
	return out
}

// phaseDeltas prints the mean of each phase between two metric readings
// (summed over nodes).
func phaseDeltas(before, after []map[string][2]float64) string {
	var parts []string
	for _, p := range phaseMetrics {
		var sum, n float64
		for i := range after {
			sum += after[i][p.name][0] - before[i][p.name][0]
			n += after[i][p.name][1] - before[i][p.name][1]
		}
		if n == 0 {
			parts = append(parts, p.label+" -")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s x%d", p.label, ms(time.Duration(sum/n*float64(time.Second))), int(n)))
	}
	return strings.Join(parts, ", ")
}

// breakdown adds n routes one by one through agents (round robin) and
// times each stage on every node by polling /v1/status: the write is
// acknowledged (committed on the leader), every node's table has it (the
// followers learned the commit), every HAProxy runs it, and it answers
// everywhere. The polling costs CPU, so these runs are separate from the
// plain latency runs.
func breakdown(leader *agent, nodes []*agent, path benchPath, bport, n int) error {
	before := make([]map[string][2]float64, len(nodes))
	for i, a := range nodes {
		before[i] = a.metricSums(phaseNames()...)
	}
	var ack, learned, applied, live []time.Duration
	hosts := func(i int) string {
		if len(nodes) == 1 {
			return "127.0.0.1"
		}
		return fmt.Sprintf("127.0.1.%d", i+1)
	}
	for i, port := range path.ports(n) {
		a := nodes[i%len(nodes)]
		t0 := time.Now()
		code, err := a.hook(fmt.Sprintf("%s-bd-%d", path.name, i), port, bport)
		if err != nil || code != 200 {
			return fmt.Errorf("breakdown add %d: %d %v", i, code, err)
		}
		ack = append(ack, time.Since(t0))
		st, err := leader.status()
		if err != nil {
			return err
		}
		idx := st.State.Index
		var tLearn, tApplied, tLive time.Duration
		deadline := time.Now().Add(30 * time.Second)
		for _, phase := range []int{0, 1, 2} {
			done := make([]bool, len(nodes))
			for slices.Contains(done, false) {
				if time.Now().After(deadline) {
					return fmt.Errorf("breakdown add %d (port %d): stage %d not reached on every node", i, port, phase)
				}
				for j, b := range nodes {
					if done[j] {
						continue
					}
					switch phase {
					case 0:
						s, err := b.status()
						done[j] = err == nil && s.State.Index >= idx
					case 1:
						s, err := b.status()
						done[j] = err == nil && s.HAProxy.AppliedIndex >= idx
					case 2:
						done[j] = liveAt(hosts(j), port)
					}
				}
				if slices.Contains(done, false) {
					time.Sleep(time.Millisecond)
				}
			}
			switch phase {
			case 0:
				tLearn = time.Since(t0)
			case 1:
				tApplied = time.Since(t0)
			case 2:
				tLive = time.Since(t0)
			}
		}
		learned, applied, live = append(learned, tLearn), append(applied, tApplied), append(live, tLive)
	}
	after := make([]map[string][2]float64, len(nodes))
	for i, a := range nodes {
		after[i] = a.metricSums(phaseNames()...)
	}
	where := "the node"
	if len(nodes) > 1 {
		where = "all nodes"
	}
	fmt.Printf("breakdown, %d adds (median time since the post, status polled every 1ms): acknowledged (committed) %s; in the table of %s %s; HAProxy applied on %s %s; answering on %s %s\n",
		len(ack), ms(pct(ack, .5)), where, ms(pct(learned, .5)), where, ms(pct(applied, .5)), where, ms(pct(live, .5)))
	fmt.Printf("  inside HAProxy's manager (mean per apply, all nodes): %s\n", phaseDeltas(before, after))
	return nil
}

// haproxyProcs returns the processes of the HAProxy running from dir
// (master and workers) and their resident memory together, in bytes.
func haproxyProcs(dir string) (procs int, rss uint64) {
	master := haproxyMaster(dir)
	if master <= 0 {
		return 0, 0
	}
	pids := append([]int{master}, procfs.Children(master)...)
	for _, p := range pids {
		if r := procRSS(p); r > 0 {
			procs++
			rss += r
		}
	}
	return procs, rss
}

// haproxyMaster is the PID of the HAProxy master an agent runs from dir
// (its pid file), 0 when there is none.
func haproxyMaster(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "haproxy", "haproxy.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// procRSS is the resident memory of pid in bytes (0 when gone).
func procRSS(pid int) uint64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func mb(b uint64) string { return fmt.Sprintf("%d MB", b>>20) }
