package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Linux capability numbers (linux/capability.h) of the capabilities the
// unit may name.
var capBits = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
}

// capMask is the CapEff-style mask of a unit's capability list.
func capMask(t *testing.T, list string) uint64 {
	t.Helper()
	var m uint64
	for _, c := range strings.Fields(list) {
		bit, ok := capBits[c]
		if !ok {
			t.Fatalf("capability %s: add its number to capBits", c)
		}
		m |= 1 << bit
	}
	return m
}

// procStatus returns the fields of /proc/pid/status (nil when the process
// is gone).
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		if gone(err) {
			return nil
		}
		t.Fatal(err)
	}
	out := map[string]string{}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// gone reports whether err says the process has exited meanwhile (an old
// worker finishing after a reload).
func gone(err error) bool {
	return os.IsNotExist(err) || errors.Is(err, syscall.ESRCH)
}

func hexCaps(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		t.Fatalf("capability set %q: %v", s, err)
	}
	return v
}

// lineEcho serves on 127.0.0.1: every line it reads comes back prefixed
// with "echo ". It returns its address.
func lineEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "echo %s\n", sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// echoConn is a client connection through HAProxy to lineEcho.
type echoConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialEcho(port int) (*echoConn, error) {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return nil, err
	}
	return &echoConn{c: c, r: bufio.NewReader(c)}, nil
}

// say sends a line and reads its echo.
func (e *echoConn) say(s string) error {
	e.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(e.c, "%s\n", s); err != nil {
		return err
	}
	got, err := e.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != "echo "+s+"\n" {
		return fmt.Errorf("got %q, want the echo of %q", got, s)
	}
	return nil
}

// serves reports whether port answers through HAProxy.
func serves(port int) bool {
	e, err := dialEcho(port)
	if err != nil {
		return false
	}
	defer e.c.Close()
	return e.say("ping") == nil
}

// unitStatus is what TestAgentUnderUnit reads of `drawbridge status --json`.
type unitStatus struct {
	State struct {
		Index uint64 `json:"index"`
	} `json:"state"`
	HAProxy struct {
		MasterPID      int    `json:"master_pid"`
		Adopted        bool   `json:"adopted"`
		AppliedIndex   uint64 `json:"applied_index"`
		Reloads        int    `json:"reloads"`
		RuntimeUpdates int    `json:"runtime_updates"`
	} `json:"haproxy"`
}

// unitAgent is the agent started through unitsandbox.py with the unit's
// privileges.
type unitAgent struct {
	cmd  *exec.Cmd
	log  *testenv.Buffer
	done chan error
}

// TestAgentUnderUnit runs the built agent with the privileges
// deploy/systemd/drawbridge.service gives it, read from the unit by
// testdata/unitsandbox.py (user drawbridge with its groups, only the unit's
// ambient capabilities and bounding set, NoNewPrivileges, the unit's
// seccomp filters, ProtectSystem=strict, ProcSubset=pid and the rest), on
// the shipped drawbridge.yaml (HAProxy isolated: own user,
// chroot), moved to a test directory and test ports. The package's users
// come from the package's own preinst.
//
// Through HAProxy a route serves; HAProxy's processes run as
// drawbridge-haproxy with CAP_NET_BIND_SERVICE and CAP_SYS_CHROOT only, the
// workers in the empty chroot, without the agent's environment (which holds
// a token); a route change reloads without dropping an open connection; a
// route in haproxy.dynamic_ports goes in through the runtime API; the agent
// restarts (a new sandbox, as systemd makes one per start) and adopts the
// running HAProxy, then reloads it and adds to it; the old workers' memory
// budget stops an old worker of HAProxy's user. HAProxy's user cannot read
// the agent's secrets or its raft data. Each capability of the unit is
// needed by one of these steps.
func TestAgentUnderUnit(t *testing.T) {
	testenv.SkipShort(t, "runs the agent and HAProxy under the unit's privileges")
	testenv.Root(t, "creating the package's users and switching to them")
	testenv.HAProxy(t)
	testenv.Command(t, "setpriv", "util-linux")
	testenv.Command(t, "systemd-analyze", "systemd")
	const py = "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import seccomp").CombinedOutput(); err != nil {
		testenv.Missing(t, "python3-seccomp is not installed (apt-get install python3-seccomp): %v %s", err, out)
	}
	// Not parallel, and one test process at a time: it creates the
	// drawbridge users, which TestDebianPackage's install creates and
	// removes too.
	machineLock(t)
	for _, p := range []string{"/etc/drawbridge", "/var/lib/drawbridge"} {
		if _, err := os.Stat(p); err == nil {
			testenv.Missing(t, "%s exists: not creating the package's users beside a drawbridge set up here", p)
		}
	}
	createPackageUsers(t)
	agentUser, err := user.Lookup("drawbridge")
	if err != nil {
		t.Fatal(err)
	}
	hUser, err := user.Lookup(testenv.HAProxyUser)
	if err != nil {
		t.Fatal(err)
	}
	hGroup, err := user.LookupGroup(testenv.HAProxyUser)
	if err != nil {
		t.Fatal(err)
	}

	unit := parseUnit(t, "systemd/drawbridge.service")
	agentCaps := capMask(t, unit.get("Service", "AmbientCapabilities"))
	if b := capMask(t, unit.get("Service", "CapabilityBoundingSet")); b != agentCaps {
		t.Errorf("bounding set %x differs from the ambient set %x", b, agentCaps)
	}
	const haproxyCaps = 1<<10 | 1<<18 // CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT

	// The node's files, laid out as the package and the config's setup
	// steps lay them out: /etc/drawbridge -> root/etc, /var/lib/drawbridge
	// (the unit's StateDirectory) -> root/state. Not under /tmp, which the
	// unit's PrivateTmp hides.
	root, err := os.MkdirTemp("/var/lib", "drawbridge-unittest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	etc, state := filepath.Join(root, "etc"), filepath.Join(root, "state")
	bin := filepath.Join(root, "bin", "drawbridge")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "install", "-m", "0755", drawbridgeBinary(t), bin)
	testenv.WriteSecrets(t, bin, etc, "edge-1")
	os.RemoveAll(filepath.Join(etc, "ca")) // the CA key stays off the nodes
	gid, _ := strconv.Atoi(agentUser.Gid)
	for name, mode := range map[string]os.FileMode{
		"": 0o755, "tls": 0o750, "token": 0o640, "gossip.key": 0o640, "do-token": 0o640,
		"tls/node-key.pem": 0o640, "tls/node.pem": 0o644, "tls/ca.pem": 0o644,
	} {
		p := filepath.Join(etc, name)
		g := gid
		if name == "" {
			g = 0
		}
		if err := os.Chown(p, 0, g); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}

	shipped, err := os.ReadFile("drawbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\n  user: " + testenv.HAProxyUser + "\n", "\n  group: " + testenv.HAProxyUser + "\n", "\n  chroot: true\n"} {
		if !bytes.Contains(shipped, []byte(want)) {
			t.Fatalf("the shipped config does not isolate HAProxy: no %q", strings.TrimSpace(want))
		}
	}
	apiPort, raftPort, gossipPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	dynFirst := testenv.FreePortRange(t, 4)
	conf := strings.NewReplacer(
		"/etc/drawbridge/", etc+"/",
		"/var/lib/drawbridge", state,
		`addr: ":9000"`, fmt.Sprintf(`addr: "127.0.0.1:%d"`, apiPort),
		`addr: ":9001"`, fmt.Sprintf(`addr: "127.0.0.1:%d"`, raftPort),
		`addr: ":9002"`, fmt.Sprintf(`addr: "127.0.0.1:%d"`, gossipPort),
		"# node_name: edge-1", "node_name: edge-1",
		"  # bootstrap: true", "  bootstrap: true",
		`bind_address: ""`, `bind_address: "127.0.0.1"`,
		"dynamic_ports: 30000-32767", fmt.Sprintf("dynamic_ports: %d-%d", dynFirst, dynFirst+3),
	).Replace(string(shipped))
	confPath := filepath.Join(etc, "drawbridge.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(confPath, 0, gid); err != nil {
		t.Fatal(err)
	}

	// The token the agent gets by environment (an operator's drop-in
	// Environment= line): HAProxy must never see it.
	const envToken = "fake-env-token-never-in-haproxy"
	hdir := filepath.Join(state, "haproxy")
	pidFile := filepath.Join(hdir, "haproxy.pid")
	masterPID := func() int {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return 0
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	t.Cleanup(func() {
		// HAProxy outlives the agent by design (KillMode=process).
		if pid := masterPID(); pid > 1 {
			syscall.Kill(pid, syscall.SIGTERM)
			testenv.Eventually(t, 10*time.Second, "haproxy master to exit", func() bool {
				return syscall.Kill(pid, 0) != nil
			})
		}
	})

	start := func(env ...string) *unitAgent {
		t.Helper()
		a := &unitAgent{log: &testenv.Buffer{}, done: make(chan error, 1)}
		args := []string{"testdata/unitsandbox.py", "--unit", "systemd/drawbridge.service",
			"--path-map", "/var/lib/drawbridge=" + state,
			"--env", "DRAWBRIDGE_API_TOKEN=" + envToken,
			// The test's backends are on loopback.
			"--env", "DRAWBRIDGE_ROUTES_ALLOW_LOOPBACK_BACKENDS=true"}
		for _, e := range env {
			args = append(args, "--env", e)
		}
		a.cmd = exec.Command(py, append(args, "--", bin, "agent", "--config", confPath)...)
		a.cmd.Env = cleanEnv()
		a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
		if err := a.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { a.done <- a.cmd.Wait() }()
		t.Cleanup(func() {
			a.stop(t)
			if t.Failed() {
				t.Logf("agent log:\n%s", a.log.String())
			}
		})
		return a
	}

	cli := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append(args, "--addr", fmt.Sprintf("https://127.0.0.1:%d", apiPort),
			"--ca-file", filepath.Join(etc, "tls/ca.pem"), "--token-file", filepath.Join(etc, "token"))...)
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var status func() unitStatus
	setRoute := func(a *unitAgent, port int, name, backend string) {
		t.Helper()
		var last string
		testenv.EventuallyEvery(t, 30*time.Second, 200*time.Millisecond, fmt.Sprintf("route %d accepted", port), func() bool {
			if a.exited() {
				t.Fatalf("the agent exited:\n%s", a.log.String())
			}
			out, err := cli("route", "set", strconv.Itoa(port), "--name", name, "--backend", backend)
			last = out
			return err == nil
		})
		_ = last
		testenv.Eventually(t, 20*time.Second, fmt.Sprintf("port %d served through haproxy", port), func() bool { return serves(port) })
		// The new worker serves a moment before the agent has confirmed
		// the change and counted it: wait for that too, so the counters
		// compared below belong to the step that moved them.
		testenv.Eventually(t, 20*time.Second, fmt.Sprintf("route %d applied", port), func() bool {
			st := status()
			return st.State.Index > 0 && st.HAProxy.AppliedIndex >= st.State.Index
		})
	}
	status = func() (st unitStatus) {
		t.Helper()
		out, err := cli("status", "--json")
		if err != nil {
			t.Fatalf("drawbridge status: %v\n%s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("drawbridge status --json: %v\n%s", err, out)
		}
		return st
	}

	backend := lineEcho(t)
	a := start()

	// The agent itself runs as the unit says, or the rest proves nothing.
	agentPID := a.cmd.Process.Pid
	testenv.Eventually(t, 10*time.Second, "the agent to run as drawbridge", func() bool {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(agentPID), "comm"))
		return err == nil && strings.TrimSpace(string(b)) == "drawbridge"
	})
	st := procStatus(t, agentPID)
	if !strings.HasPrefix(st["Uid"], agentUser.Uid+" ") || hexCaps(t, st["CapEff"]) != agentCaps || hexCaps(t, st["CapBnd"]) != agentCaps ||
		st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" || !slices.Contains(strings.Fields(st["Groups"]), hGroup.Gid) {
		t.Fatalf("the agent does not run with the unit's privileges: %v", st)
	}

	static1, static2, static3 := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	setRoute(a, static1, "web", backend)

	// HAProxy: its own user and group, no supplementary groups, two
	// capabilities, workers in the empty chroot, a scrubbed environment.
	master := masterPID()
	if master == 0 {
		t.Fatal("no HAProxy pid file")
	}
	checkHAProxy := func() {
		t.Helper()
		master := masterPID()
		workers := procfs.Children(master)
		if len(workers) == 0 {
			t.Fatal("HAProxy has no worker")
		}
		checked := 0
		for _, pid := range append([]int{master}, workers...) {
			st := procStatus(t, pid)
			env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
			// A worker that is exiting has no memory left, and an empty
			// environment.
			if st == nil || (err != nil && gone(err)) || (err == nil && len(env) == 0 && pid != master) {
				if pid == master {
					t.Fatal("the HAProxy master is gone")
				}
				continue // an old worker that just finished
			}
			if err != nil {
				t.Fatal(err)
			}
			checked++
			if st["Uid"] != strings.Repeat(hUser.Uid+" ", 3)+hUser.Uid || st["Gid"] != strings.Repeat(hGroup.Gid+" ", 3)+hGroup.Gid || st["Groups"] != "" {
				t.Errorf("haproxy pid %d: Uid %q Gid %q Groups %q, want %s only", pid, st["Uid"], st["Gid"], st["Groups"], testenv.HAProxyUser)
			}
			for _, set := range []string{"CapPrm", "CapEff", "CapAmb", "CapInh"} {
				if c := hexCaps(t, st[set]); c != haproxyCaps {
					t.Errorf("haproxy pid %d: %s %x, want %x (CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT)", pid, set, c, haproxyCaps)
				}
			}
			if st["NoNewPrivs"] != "1" {
				t.Errorf("haproxy pid %d: NoNewPrivs %q", pid, st["NoNewPrivs"])
			}
			for _, kv := range strings.Split(strings.TrimRight(string(env), "\x00"), "\x00") {
				if strings.Contains(kv, envToken) || (!strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "HAPROXY_")) {
					t.Errorf("haproxy pid %d has %q in its environment", pid, kv)
				}
			}
		}
		if checked < 2 {
			t.Fatalf("checked %d HAProxy processes, want the master and a worker at least", checked)
		}
		for _, pid := range workers {
			root, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "root"))
			if err != nil && gone(err) {
				continue
			}
			if err != nil || root != filepath.Join(hdir, "empty") {
				t.Errorf("worker %d root %q (%v), want the chroot %s", pid, root, err, filepath.Join(hdir, "empty"))
			}
		}
		if ents, err := os.ReadDir(filepath.Join(hdir, "empty")); err != nil || len(ents) != 0 {
			t.Errorf("chroot %s: %v %v, want empty", filepath.Join(hdir, "empty"), ents, err)
		}
	}
	checkHAProxy()

	// HAProxy's user reads none of the agent's secrets, nor its raft data.
	for _, p := range []string{"token", "gossip.key", "do-token", "tls/node-key.pem", "drawbridge.yaml"} {
		asHAProxy := exec.Command("setpriv", "--reuid", testenv.HAProxyUser, "--regid", testenv.HAProxyUser, "--init-groups",
			"cat", filepath.Join(etc, p))
		if out, err := asHAProxy.CombinedOutput(); err == nil || !bytes.Contains(out, []byte("Permission denied")) {
			t.Errorf("%s read %s: %v %s", testenv.HAProxyUser, p, err, out)
		}
	}
	asHAProxy := exec.Command("setpriv", "--reuid", testenv.HAProxyUser, "--regid", testenv.HAProxyUser, "--init-groups",
		"ls", filepath.Join(state, "raft"))
	if out, err := asHAProxy.CombinedOutput(); err == nil {
		t.Errorf("%s listed the raft data: %s", testenv.HAProxyUser, out)
	}

	// A route change reloads; a connection open across it survives.
	held, err := dialEcho(static1)
	if err != nil {
		t.Fatal(err)
	}
	defer held.c.Close()
	if err := held.say("before the reload"); err != nil {
		t.Fatal(err)
	}
	reloads := status().HAProxy.Reloads
	setRoute(a, static2, "web2", backend)
	// The new worker serves a moment before the agent has confirmed the
	// reload and counted it.
	testenv.Eventually(t, 10*time.Second, "the reload counted", func() bool { return status().HAProxy.Reloads > reloads })
	if st := status(); st.HAProxy.MasterPID != master {
		t.Errorf("adding a route: master %d -> %d; want a reload of the same master", master, st.HAProxy.MasterPID)
	}
	if err := held.say("after the reload"); err != nil {
		t.Errorf("the open connection did not survive the reload: %v", err)
	}

	// A route in the dynamic range goes in through the runtime API: no
	// reload, HAProxy's admin socket reached through its group.
	before := status().HAProxy
	setRoute(a, dynFirst+1, "dyn", backend)
	if st := status().HAProxy; st.Reloads != before.Reloads || st.RuntimeUpdates <= before.RuntimeUpdates {
		t.Errorf("dynamic route: reloads %d -> %d, runtime updates %d -> %d; want a runtime change", before.Reloads, st.Reloads, before.RuntimeUpdates, st.RuntimeUpdates)
	}
	checkHAProxy()

	// Restart: the agent stops (HAProxy serves on), a new one starts in a
	// new sandbox and adopts the running master through its pid file and
	// master socket, then reloads it and changes it at runtime.
	a.stop(t)
	if !serves(static1) || !serves(dynFirst+1) {
		t.Error("HAProxy stopped serving with the agent")
	}
	a = start()
	setRoute(a, static3, "web3", backend)
	st2 := status().HAProxy
	if !st2.Adopted || st2.MasterPID != master {
		t.Errorf("after the restart: adopted %v master %d, want the running master %d adopted", st2.Adopted, st2.MasterPID, master)
	}
	testenv.Eventually(t, 10*time.Second, "the adopted master reloaded for the new route", func() bool { return status().HAProxy.Reloads >= 1 })
	setRoute(a, dynFirst+2, "dyn2", backend)
	for _, p := range []int{static1, static2, static3, dynFirst + 1, dynFirst + 2} {
		if !serves(p) {
			t.Errorf("port %d not served after the restart", p)
		}
	}
	if err := held.say("after the restart"); err != nil {
		t.Errorf("the open connection did not survive the agent's restart: %v", err)
	}
	checkHAProxy()

	// The old workers' memory budget stops an old worker of HAProxy's
	// user, whose memory the agent reads in /proc (ProtectProc=default)
	// and which it may signal only with CAP_KILL: with a budget of 1 MB the
	// worker holding the connection opened before the first reload goes,
	// and with it the connection.
	a.stop(t)
	a = start("DRAWBRIDGE_HAPROXY_OLD_WORKERS_MAX_MB=1")
	testenv.Eventually(t, 20*time.Second, "the old worker stopped by the memory budget", func() bool {
		return strings.Contains(a.log.String(), "old haproxy worker stopped")
	})
	testenv.Eventually(t, 10*time.Second, "the old worker's connection closed", func() bool {
		return held.say("still there?") != nil
	})
	if !serves(static1) {
		t.Error("the current worker stopped serving")
	}
}

// exited reports whether the agent process has ended.
func (a *unitAgent) exited() bool {
	select {
	case err := <-a.done:
		a.done <- err
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, as systemctl stop does, and waits for the agent.
func (a *unitAgent) stop(t *testing.T) {
	t.Helper()
	if a.exited() {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		a.done <- nil
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		t.Errorf("the agent did not stop within 30s (TimeoutStopSec)")
	}
}

// createPackageUsers runs the package's preinst, which creates drawbridge
// and drawbridge-haproxy (and puts drawbridge in drawbridge-haproxy's
// group), and removes what it created when the test ends.
func createPackageUsers(t *testing.T) {
	t.Helper()
	existed := map[string]bool{}
	for _, n := range []string{"drawbridge", testenv.HAProxyUser} {
		_, uerr := user.Lookup(n)
		_, gerr := user.LookupGroup(n)
		existed["u:"+n], existed["g:"+n] = uerr == nil, gerr == nil
	}
	t.Cleanup(func() {
		for _, n := range []string{"drawbridge", testenv.HAProxyUser} {
			if !existed["u:"+n] {
				exec.Command("userdel", n).Run()
			}
		}
		for _, n := range []string{"drawbridge", testenv.HAProxyUser} {
			if !existed["g:"+n] {
				exec.Command("groupdel", n).Run()
			}
		}
	})
	run(t, "sh", "debian/preinst", "install")
}

// machineLock holds, until the test ends, the lock that serialises the
// tests that change this machine (the package's users, dpkg, /etc/drawbridge)
// across test processes: two `go test ./deploy` runs at once on one
// machine would otherwise delete each other's users midway.
func machineLock(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "drawbridge-deploy-machine.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
