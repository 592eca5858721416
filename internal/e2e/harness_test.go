package e2e

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/netns"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// testToken is an obviously fake token used only by tests.
const testToken = "test-token-not-a-secret-0000"

// binPath is drawbridge built with the race detector, so the real wiring of
// every component is race-checked under the tests' load: a race the agent
// reports fails the test that ran it (see agentProc.launch).
var binPath string

// timingBinPath is drawbridge built without it, for the tests that assert
// failover timings (failover_e2e_test.go): the detector slows the agent
// several times over, which changes gossip's timing, not our logic.
var timingBinPath string

// raceReport starts every report of the race detector.
const raceReport = "WARNING: DATA RACE"

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("end-to-end tests skipped in -short mode")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "drawbridge-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "drawbridge-race")
	timingBinPath = filepath.Join(dir, "drawbridge")
	for _, b := range []struct {
		path  string
		flags []string
	}{{binPath, []string{"-race"}}, {timingBinPath, nil}} {
		args := append(append([]string{"build"}, b.flags...), "-o", b.path, "github.com/drawbridge-lb/drawbridge/cmd/drawbridge")
		if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(args, " "), err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireHAProxy(t *testing.T) {
	t.Helper()
	testenv.HAProxy(t)
}

// testAgent is one drawbridge process started from the built binary.
type testAgent struct {
	t       testing.TB
	dir     string
	name    string
	apiPort int
	args    []string
	env     []string
	wd      string // working directory ("" = the test's)
	fdLimit int    // RLIMIT_NOFILE to run under (0 = inherited)
	agentProc
}

// agentProc is one agent process, on loopback or inside a namespace, kept
// across restarts: the output of every run goes to one log buffer.
type agentProc struct {
	mu     sync.Mutex // guards cmd and exited across restarts
	cmd    *exec.Cmd
	logs   *testenv.Buffer
	exited chan struct{}
}

// launch starts cmd (built by the caller) with the test token and env.
func (p *agentProc) launch(t testing.TB, cmd *exec.Cmd, env []string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.logs == nil {
		p.logs = &testenv.Buffer{}
		logs := p.logs
		t.Cleanup(func() {
			if strings.Contains(logs.String(), raceReport) {
				t.Errorf("the race detector reported a data race in %s:\n%s", cmd.Args[0], logs)
			}
		})
	} else {
		fmt.Fprintf(p.logs, "---- restarted at %s ----\n", time.Now().Format("15:04:05.000"))
	}
	// Test agents route to servers on loopback, and tests fire bursts
	// beyond the default rate limit; env given by a test comes later and
	// wins (the security tests set their own).
	cmd.Env = append(append(os.Environ(), "DRAWBRIDGE_API_TOKEN="+testToken,
		"DRAWBRIDGE_ROUTES_ALLOW_LOOPBACK_BACKENDS=true", "DRAWBRIDGE_LIMITS_RATE=0"), env...)
	ownConfigFile(t, cmd)
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Args, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited
}

// proc returns the current process and its exit channel (nil before start).
func (p *agentProc) proc() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.exited
}

// running reports whether the process is alive.
func (p *agentProc) running() bool {
	_, exited := p.proc()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// signal sends sig and waits up to within for the process to exit; it
// reports whether it did (true when it was not running).
func (p *agentProc) signal(sig syscall.Signal, within time.Duration) bool {
	cmd, exited := p.proc()
	if cmd == nil || cmd.Process == nil {
		return true
	}
	select {
	case <-exited:
		return true
	default:
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
		return true
	case <-time.After(within):
		return false
	}
}

// stopOrKill sends SIGTERM, then SIGKILL after within, and waits.
func (p *agentProc) stopOrKill(within time.Duration) bool {
	if p.signal(syscall.SIGTERM, within) {
		return true
	}
	p.signal(syscall.SIGKILL, time.Minute)
	return false
}

// startDevAgent starts `agent --dev` on free ports with its data in a fresh
// directory, waits until it is ready, and stops it and its HAProxy at the end
// of the test.
func startDevAgent(t testing.TB, extra ...string) *testAgent {
	t.Helper()
	return startDevAgentEnv(t, nil, extra...)
}

// startDevAgentEnv is startDevAgent with extra DRAWBRIDGE_* environment.
func startDevAgentEnv(t testing.TB, env []string, extra ...string) *testAgent {
	t.Helper()
	a := newDevAgent(t, env, extra...)
	a.start()
	a.waitReady()
	return a
}

// newDevAgent is a dev agent on free ports with its data in a fresh
// directory, stopped with its HAProxy at the end of the test, but not yet
// started: for tests that set a descriptor limit or watch it come up.
func newDevAgent(t testing.TB, env []string, extra ...string) *testAgent {
	t.Helper()
	a := &testAgent{t: t, dir: t.TempDir(), name: "e2e", apiPort: testenv.FreePort(t), env: env}
	a.args = append([]string{"agent", "--dev",
		"--data-dir", a.dir,
		"--node-name", a.name,
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", a.apiPort),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--log-level", "debug",
	}, extra...)
	t.Cleanup(func() {
		a.stop()
		stopHAProxyIn(filepath.Join(a.dir, "haproxy"))
		if t.Failed() {
			t.Logf("agent logs:\n%s", a.logs.String())
		}
	})
	return a
}

// start runs the agent process; logs of every start go to one buffer.
func (a *testAgent) start() {
	a.t.Helper()
	cmd := exec.Command(binPath, a.args...)
	if a.fdLimit > 0 {
		// The shell sets the limit and execs the agent: same PID, and its
		// HAProxy inherits the limit.
		cmd = exec.Command("/bin/sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, a.fdLimit), binPath}, a.args...)...)
	}
	cmd.Dir = a.wd
	a.launch(a.t, cmd, a.env)
}

// stop sends SIGTERM and waits for the agent to exit.
func (a *testAgent) stop() {
	if !a.stopOrKill(20 * time.Second) {
		a.t.Errorf("agent did not stop within 20s after SIGTERM")
	}
}

// kill sends SIGKILL and waits.
func (a *testAgent) kill() { a.signal(syscall.SIGKILL, time.Minute) }

func (a *testAgent) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", a.apiPort, path)
}

func (a *testAgent) waitReady() {
	a.t.Helper()
	_, exited := a.proc()
	testenv.Eventually(a.t, 30*time.Second, "agent ready", func() bool {
		select {
		case <-exited:
			a.t.Fatalf("agent exited early:\n%s", a.logs.String())
		default:
		}
		resp, err := http.Get(a.url("/readyz"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return false
		}
		// Ready to serve traffic is not ready to commit: wait for a leader.
		req, _ := http.NewRequest("GET", a.url("/v1/status"), nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Raft struct {
				Leader string `json:"leader"`
			} `json:"raft"`
		}
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Raft.Leader != ""
	})
}

// request sends a JSON request with the given headers and returns status and
// body; a transport error fails the test.
func (a *testAgent) request(method, path string, headers map[string]string, body any) (int, []byte) {
	a.t.Helper()
	code, out := a.requestWith(http.DefaultClient, method, path, headers, body)
	if code == 0 {
		a.t.Fatalf("%s %s: %s", method, path, out)
	}
	return code, out
}

// tryRequest is request without failing the test: status 0 on a transport error.
func (a *testAgent) tryRequest(method, path string, headers map[string]string, body any) (int, []byte) {
	return a.requestWith(http.DefaultClient, method, path, headers, body)
}

// requestWith sends the request with client; status 0 and the error text on a
// transport error.
func (a *testAgent) requestWith(client *http.Client, method, path string, headers map[string]string, body any) (int, []byte) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, a.url(path), rd)
	if err != nil {
		return 0, []byte(err.Error())
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func bearer() map[string]string { return map[string]string{"Authorization": "Bearer " + testToken} }

// status returns /v1/status decoded loosely.
func (a *testAgent) status() map[string]any {
	a.t.Helper()
	code, body := a.request("GET", "/v1/status", bearer(), nil)
	if code != 200 {
		a.t.Fatalf("status: %d %s", code, body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		a.t.Fatal(err)
	}
	return m
}

// haproxyPID reads the master PID from the agent's HAProxy pid file.
func haproxyPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "haproxy.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.Split(string(b), "\n")[0]))
	return pid
}

// stopHAProxyIn kills the HAProxy master (and so its workers) that an agent
// left running in dir.
func stopHAProxyIn(dir string) {
	pid := haproxyPID(dir)
	if pid <= 0 {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// backend is a TCP server that greets every connection with its name.
type backend struct {
	ln   net.Listener
	name string
}

func startBackend(t testing.TB, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, name: name}
	go serveGreeting(ln, name)
	t.Cleanup(func() { ln.Close() })
	return b
}

// serveGreetingIn runs serveGreeting on h's address and port inside its
// namespace until the test ends.
func serveGreetingIn(t testing.TB, h *netns.Host, port int, greeting string) {
	t.Helper()
	ln, err := h.Listen("tcp", net.JoinHostPort(h.IP, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveGreeting(ln, greeting)
}

// serveGreeting answers every connection on ln with greeting and a newline,
// until ln is closed: the backend of end-to-end tests.
func serveGreeting(ln net.Listener, greeting string) {
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
}

func (b *backend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

// dialRead connects to addr and returns the first line it reads.
func dialRead(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// cliCommand returns the built binary run as a client of a's API.
func cliCommand(a *testAgent, args ...string) *exec.Cmd {
	cmd := exec.Command(binPath, append(args, "--addr", a.url(""))...)
	cmd.Env = append(os.Environ(), "DRAWBRIDGE_API_TOKEN="+testToken)
	return cmd
}

// hookPayload is the recipe's webhook body.
func hookPayload(name string, frontend, backendPort int, ip, action string) map[string]any {
	return map[string]any{
		"name": name, "frontend-port": frontend, "backend-port": backendPort,
		"dst-ip": ip, "action": action,
	}
}

// ownConfigFile gives an `agent` command without --config an empty config
// file of its own. Without one, an agent reads /etc/drawbridge/drawbridge.yaml
// whenever it exists, and the deploy tests install the package on this
// machine while these tests run. Both builds count, also behind a wrapper
// (`ip netns exec NS BIN agent ...`).
func ownConfigFile(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	at := -1
	for i, a := range cmd.Args {
		if a == "--config" || strings.HasPrefix(a, "--config=") {
			return
		}
		if a == "agent" && at < 0 && i > 0 && (cmd.Args[i-1] == binPath || cmd.Args[i-1] == timingBinPath) {
			at = i
		}
	}
	if at < 0 {
		return
	}
	empty := filepath.Join(t.TempDir(), "drawbridge.yaml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{}, cmd.Args[:at+1]...)
	args = append(args, "--config", empty)
	cmd.Args = append(args, cmd.Args[at+1:]...)
}
