package testenv

import (
	"crypto/rand"
	"encoding/base64"
	"testing"

	"github.com/drawbridge-lb/drawbridge/internal/pki"
)

// ClusterCredentials creates under dir what a secure cluster of the named
// nodes needs, as `make cluster` does: a CA, one certificate per node
// naming it, and a gossip key. It returns, per node name, the DRAWBRIDGE_*
// environment that turns on gossip encryption and raft mutual TLS.
func ClusterCredentials(tb testing.TB, dir string, names ...string) map[string][]string {
	tb.Helper()
	creds, err := pki.CreateCluster(dir, nil, names...)
	if err != nil {
		tb.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		tb.Fatal(err)
	}
	out := map[string][]string{}
	for name, c := range creds {
		out[name] = append(c.Env(), "DRAWBRIDGE_GOSSIP_KEY="+base64.StdEncoding.EncodeToString(key))
	}
	return out
}
