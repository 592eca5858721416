package haproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// haproxyBin returns the haproxy binary or skips the test.
func haproxyBin(tb testing.TB) string {
	tb.Helper()
	return testenv.HAProxy(tb)
}

// checkConfig runs haproxy -c on cfg.
func checkConfig(tb testing.TB, cfg []byte) error {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		tb.Fatal(err)
	}
	return Validate(context.Background(), haproxyBin(tb), path)
}

// echoBackend listens on 127.0.0.1 and greets every connection with reply.
func echoBackend(tb testing.TB, reply string) int {
	tb.Helper()
	return greetBackend(tb, reply, false)
}

// greetBackend greets every connection with reply, then closes it, or with
// hold keeps it open until the peer closes it (a long-lived client).
func greetBackend(tb testing.TB, reply string, hold bool) int {
	tb.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, reply+"\n")
				if hold {
					_, _ = io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// dialRead connects to 127.0.0.1:port and returns the first line received.
func dialRead(port int) (string, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// testConfig returns a Manager config for dir with short timings and a
// MaxConn that fits the test machine's file descriptor limit.
func testConfig(tb testing.TB, dir string) Config {
	return Config{
		Bin: haproxyBin(tb),
		Dir: dir,
		Settings: Settings{
			BindAddress: "127.0.0.1",
			MaxConn:     1000,
		},
		RetryInterval:  200 * time.Millisecond,
		HealthInterval: 100 * time.Millisecond,
		Logger:         testenv.Logger(tb),
	}
}

// runtimeConfig is testConfig with the runtime API (the stats socket in
// dir), for the tests that change HAProxy without a reload.
func runtimeConfig(tb testing.TB, dir string) Config {
	cfg := testConfig(tb, dir)
	cfg.Settings.StatsSocket = filepath.Join(dir, "admin.sock")
	return cfg
}

// startManager starts a Manager and registers cleanups that stop its loop
// and the HAProxy it runs.
func startManager(tb testing.TB, cfg Config) *Manager {
	tb.Helper()
	m, err := NewManager(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		m.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.StopHAProxy(ctx); err != nil {
			tb.Error(err)
		}
	})
	return m
}

func waitApplied(tb testing.TB, m *Manager, index uint64) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := m.WaitApplied(ctx, index); err != nil {
		tb.Fatalf("%v (status %+v)", err, m.Status())
	}
}

func route(port int, name string, backends ...int) Frontend {
	fe := Frontend{Port: port, Name: name, Balance: "roundrobin"}
	for _, b := range backends {
		fe.Servers = append(fe.Servers, Server{Address: "127.0.0.1", Port: b})
	}
	return fe
}

// ownAndSquattedPorts makes m serve a route (index 1) on port to backend,
// and holds other with a listener of this process until the test ends:
// one port HAProxy listens on, one it does not.
func ownAndSquattedPorts(tb testing.TB, m *Manager) (backend, port, other int) {
	tb.Helper()
	backend = echoBackend(tb, "own")
	port = testenv.FreePort(tb)
	m.Submit(1, []Frontend{route(port, "web", backend)})
	waitApplied(tb, m, 1)
	squatter, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { squatter.Close() })
	return backend, port, squatter.Addr().(*net.TCPAddr).Port
}

// waitServed waits until index is live except for routes held back.
func waitServed(tb testing.TB, m *Manager, index uint64) {
	tb.Helper()
	testenv.Eventually(tb, 15*time.Second, fmt.Sprintf("index %d served", index), func() bool { return m.Status().ServedIndex >= index })
}

// longLived opens a connection through port and reads the greeting.
func longLived(t *testing.T, port int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "hold\n" {
		t.Fatalf("long-lived connection: %q, %v", line, err)
	}
	return c
}
