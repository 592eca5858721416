package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

const testToken = "test-token-not-a-secret-0123456789"

// witnessConfig is a single self-bootstrapped witness (no HAProxy) on
// loopback, with gossip timings shortened for tests.
func witnessConfig(t *testing.T, dir string) Config {
	c := Config{
		NodeName: "w1",
		DataDir:  dir,
		Role:     cluster.RoleWitness,
		API: APIConfig{
			Addr:         testenv.FreeAddr(t),
			Token:        testToken,
			LegacyHeader: "X-Funkypenguin-Token",
			ApplyTimeout: 5 * time.Second,
		},
		Raft: RaftConfig{
			Addr:             testenv.FreeAddr(t),
			Bootstrap:        true,
			HeartbeatTimeout: 500 * time.Millisecond,
			ElectionTimeout:  500 * time.Millisecond,
		},
		Gossip: GossipConfig{
			Addr:           testenv.FreeAddr(t),
			Label:          "drawbridge-test",
			ProbeInterval:  200 * time.Millisecond,
			ProbeTimeout:   100 * time.Millisecond,
			SuspicionMult:  2,
			GossipInterval: 100 * time.Millisecond,
		},
		FloatingIP: FloatingIPConfig{Provider: "none"},
		Log:        LogConfig{Level: "debug", Format: "text"},
	}
	c.Fill()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func getJSON(url string, out any) error {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func TestRunServesUntilShutdownThenStopsInOrder(t *testing.T) {
	dir := t.TempDir()
	cfg := witnessConfig(t, dir)
	a, err := New(cfg, Deps{Logger: testenv.Logger(t), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(context.Background()) }()

	base := "http://" + cfg.API.Addr
	var st api.Status
	testenv.Eventually(t, 10*time.Second, "the witness to lead and serve its status", func() bool {
		select {
		case err := <-runErr:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		return getJSON(base+"/v1/status", &st) == nil && st.Raft.State == "Leader"
	})
	if st.Node != "w1" || st.Version != "test" || st.Role != cluster.RoleWitness {
		t.Errorf("status = %+v; want node w1, version test, role witness", st)
	}
	var cl api.ClusterStatus
	if err := getJSON(base+"/v1/cluster", &cl); err != nil {
		t.Fatal(err)
	}
	if len(cl.Members) != 1 || cl.Members[0].Name != "w1" || !cl.Members[0].Voter || cl.Leader != "w1" {
		t.Errorf("cluster = %+v; want w1 alone, leading and voting", cl)
	}
	// The per-write checks read the members' addresses alone: the same
	// ones the cluster status reports.
	var want []api.MemberAddress
	for _, m := range a.info.Cluster().Members {
		want = append(want, api.MemberAddress{Name: m.Name, RaftAddr: m.RaftAddr, GossipAddr: m.GossipAddr, APIURL: m.APIURL})
	}
	if got := a.info.MemberAddresses(); !reflect.DeepEqual(got, want) || len(got) != 1 || got[0].RaftAddr == "" {
		t.Errorf("MemberAddresses = %+v; want the cluster status's %+v", got, want)
	}
	pid, err := os.ReadFile(PIDFile(dir))
	if err != nil || string(pid) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("pid file = %q, %v; want this process's pid", pid, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-runErr; err != nil {
		t.Errorf("Run = %v after Shutdown; want nil", err)
	}
	if _, err := os.Stat(PIDFile(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file still there after Shutdown (%v)", err)
	}
	if _, err := net.DialTimeout("tcp", cfg.API.Addr, time.Second); err == nil {
		t.Error("the API still accepts connections after Shutdown")
	}
	if err := a.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded; want an error")
	}
}

// A start step that fails (here: the API port is taken) stops what started
// before it, so the same data dir can be opened again at once.
func TestRunFailingStartReleasesWhatStarted(t *testing.T) {
	dir := t.TempDir()
	cfg := witnessConfig(t, dir)
	taken, err := net.Listen("tcp", cfg.API.Addr)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Deps{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil {
		t.Fatal("Run succeeded with its API port taken")
	}
	taken.Close()
	if _, err := os.Stat(PIDFile(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left behind after a failed start (%v)", err)
	}

	// Raft's stores and the gossip and raft ports were released.
	b, err := New(cfg, Deps{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()
	var st api.Status
	testenv.Eventually(t, 10*time.Second, "the restarted witness to serve", func() bool {
		return getJSON("http://"+cfg.API.Addr+"/v1/status", &st) == nil && st.Raft.State == "Leader"
	})
	cancel()
	if err := <-runErr; err != nil {
		t.Errorf("Run = %v after its context ended; want nil", err)
	}
}

func TestShutdownBeforeRun(t *testing.T) {
	cfg := witnessConfig(t, t.TempDir())
	a, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, Deps{}); err == nil {
		t.Fatal("a second agent got the data dir while the first holds it")
	}
	if err := a.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The lock went with the Shutdown, though Run never ran: the data dir
	// is free again.
	b, err := New(cfg, Deps{})
	if err != nil {
		t.Fatalf("New after Shutdown: %v", err)
	}
	b.Shutdown(context.Background())
	if err := a.Run(context.Background()); err != nil {
		t.Errorf("Run after Shutdown = %v; want nil at once", err)
	}
}

func TestNewRefusesWhatCannotStart(t *testing.T) {
	cfg := witnessConfig(t, t.TempDir())
	cfg.API.Token = "short"
	if _, err := New(cfg, Deps{}); err == nil {
		t.Error("New accepted a 5-character token")
	}
	cfg = witnessConfig(t, t.TempDir())
	cfg.Role = cluster.RoleEdge
	cfg.HAProxy.Bin = "drawbridge-no-such-haproxy"
	cfg.HAProxy.Dir = t.TempDir()
	if _, err := New(cfg, Deps{}); err == nil {
		t.Error("New accepted an edge node without an HAProxy binary")
	}
}
