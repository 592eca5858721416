package floatingip

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" = must succeed
	}{
		{name: "empty is none", cfg: Config{}},
		{name: "none", cfg: Config{Provider: "none"}},
		{name: "unknown provider", cfg: Config{Provider: "aws"}, wantErr: `unknown provider "aws"`},
		{name: "vip without address", cfg: Config{Provider: "vip", Interface: "lo"}, wantErr: "address is required"},
		{name: "vip with IPv6", cfg: Config{Provider: "vip", Address: "2001:db8::1", Interface: "lo"}, wantErr: "needs an IPv4 address"},
		{name: "vip with garbage", cfg: Config{Provider: "vip", Address: "ten.0.0.1", Interface: "lo"}, wantErr: `address "ten.0.0.1"`},
		{name: "vip prefix too long", cfg: Config{Provider: "vip", Address: "192.0.2.1", Interface: "lo", PrefixLen: 33}, wantErr: "prefix length 33"},
		{name: "exec without command", cfg: Config{Provider: "exec", Address: "192.0.2.1", NodeName: "n1"}, wantErr: "needs a command"},
		{name: "exec without node", cfg: Config{Provider: "exec", Address: "192.0.2.1", ExecCommand: "/bin/true"}, wantErr: "node name"},
		{name: "exec negative retries", cfg: Config{Provider: "exec", Address: "192.0.2.1", NodeName: "n1", ExecCommand: "/bin/true", ExecRetries: -1}, wantErr: "negative"},
		{name: "exec ok, IPv6 allowed", cfg: Config{Provider: "exec", Address: "2001:db8::1", NodeName: "n1", ExecCommand: "/bin/true"}},
		{name: "digitalocean without token", cfg: Config{Provider: "digitalocean", Address: "192.0.2.1", DODropletID: 1}, wantErr: "needs an API token"},
		{name: "digitalocean negative droplet", cfg: Config{Provider: "digitalocean", Address: "192.0.2.1", DOToken: "x", DODropletID: -1}, wantErr: "negative"},
		{name: "digitalocean ok", cfg: Config{Provider: "DigitalOcean", Address: "192.0.2.1", DOToken: "x", DODropletID: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg)
			if tc.wantErr == "" {
				if err != nil || p == nil {
					t.Fatalf("New = %v, %v", p, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New error = %v, want it to mention %q", err, tc.wantErr)
			}
			if p != nil {
				t.Fatalf("New returned a provider with its error: %#v", p)
			}
		})
	}
}

func TestExecDefaults(t *testing.T) {
	p, err := New(Config{Provider: "exec", Address: "192.0.2.1", NodeName: "n1", ExecCommand: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	e := p.(*Exec)
	if e.timeout != 10*time.Second || e.retries != 3 {
		t.Fatalf("defaults: timeout %s retries %d", e.timeout, e.retries)
	}
}

func TestNone(t *testing.T) {
	p, err := New(Config{Provider: "none", Address: "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if p.Name() != "none" || p.Claim(ctx) != nil || p.Release(ctx) != nil {
		t.Fatal("none provider misbehaves")
	}
	mustHeld(t, p, false)
}
