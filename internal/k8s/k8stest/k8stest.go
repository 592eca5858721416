// Package k8stest runs a real etcd and kube-apiserver for tests, from the
// binaries scripts/k8s-testbin.sh builds into a cache outside the
// repository. When they are missing the test is skipped with the command
// that builds them, or fails where the full suite is required
// (DRAWBRIDGE_TEST_FULL=1).
package k8stest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Versions the cache directory is named after; scripts/k8s-testbin.sh
// builds these.
const (
	KubernetesVersion = "v1.32.13"
	EtcdVersion       = "v3.5.21"
)

// AdminToken authenticates as a member of system:masters. Tests only.
const AdminToken = "admin-token-not-a-secret-0000"

// Dir is where the binaries are: $DRAWBRIDGE_K8S_TESTBIN, or the cache
// directory scripts/k8s-testbin.sh uses.
func Dir() string {
	if d := os.Getenv("DRAWBRIDGE_K8S_TESTBIN"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "drawbridge", "k8s-testbin", "kubernetes-"+KubernetesVersion+"-etcd-"+EtcdVersion)
}

// User is an identity the API server accepts by token.
type User struct {
	Token  string
	Name   string
	Groups []string
}

// APIServer is a running kube-apiserver with its own etcd.
type APIServer struct {
	// URL is the API server's https address on 127.0.0.1.
	URL string
	dir string
}

// Start runs etcd and kube-apiserver (RBAC authorization, the given users
// besides the admin) and waits until the API server is ready. Both stop
// when the test ends.
func Start(t testing.TB, users ...User) *APIServer {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no kube-apiserver")
	}
	bin := Dir()
	etcdBin, apiBin := filepath.Join(bin, "etcd"), filepath.Join(bin, "kube-apiserver")
	for _, b := range []string{etcdBin, apiBin} {
		if _, err := os.Stat(b); err != nil {
			testenv.Missing(t, "%s is not built (run `make k8s-testbin` or scripts/k8s-testbin.sh; a few minutes)", b)
		}
	}
	dir := t.TempDir()

	clientPort, peerPort := testenv.FreePort(t), testenv.FreePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	start(t, "etcd", etcdBin,
		"--name", "test",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test="+peerURL,
		"--unsafe-no-fsync",
		"--log-level", "warn")

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	write(t, filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	var tokens strings.Builder
	fmt.Fprintf(&tokens, "%s,admin,admin-uid,system:masters\n", AdminToken)
	for i, u := range users {
		fmt.Fprintf(&tokens, "%s,%s,uid-%d,\"%s\"\n", u.Token, u.Name, i, strings.Join(u.Groups, ","))
	}
	write(t, filepath.Join(dir, "tokens.csv"), []byte(tokens.String()))

	port := testenv.FreePort(t)
	s := &APIServer{URL: fmt.Sprintf("https://127.0.0.1:%d", port), dir: dir}
	start(t, "kube-apiserver", apiBin,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(port),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--enable-priority-and-fairness=false",
		"--endpoint-reconciler-type", "none",
		"--v", "0")
	s.waitReady(t)
	return s
}

// Kubeconfig writes a kubeconfig for the token's user and returns its
// path. The API server's certificate is self-signed: the file skips
// verification (the server is on loopback, made by the test).
func (s *APIServer) Kubeconfig(t testing.TB, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	write(t, p, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: user
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: user}
current-context: test
`, s.URL, token)))
	return p
}

func (s *APIServer) waitReady(t testing.TB) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test's own loopback server
	var last string
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+AdminToken)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver not ready within 90s: %s", last)
}

func write(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs a process for the test's lifetime, with its output in the
// test log when the test fails.
func start(t testing.TB, name, bin string, args ...string) {
	t.Helper()
	logs := &testenv.Buffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out := logs.String()
			if len(out) > 8000 {
				out = "…" + out[len(out)-8000:]
			}
			t.Logf("%s output (tail):\n%s", name, out)
		}
	})
}
