//go:build !nocontroller

package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestControllerRefusesBadConfiguration checks that the controller exits 2
// with a message, before contacting anything, for each bad setting.
func TestControllerRefusesBadConfiguration(t *testing.T) {
	t.Setenv("DRAWBRIDGE_API_TOKEN", "")
	t.Setenv("DRAWBRIDGE_API_URLS", "")
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no api", nil, nil, "no drawbridge node"},
		{"no token", nil, []string{"--api", "http://127.0.0.1:1"}, "no API token"},
		{"api with credentials", map[string]string{"DRAWBRIDGE_API_TOKEN": "t"}, []string{"--api", "http://user:pw@127.0.0.1:1"}, "credentials"},
		{"api not a URL", map[string]string{"DRAWBRIDGE_API_TOKEN": "t"}, []string{"--api", "ftp://127.0.0.1:1"}, "ftp"},
		{"external ip", map[string]string{"DRAWBRIDGE_API_TOKEN": "t"}, []string{"--api", "http://127.0.0.1:1", "--external-ip", "example.com"}, "not an IP"},
		{"name prefix", map[string]string{"DRAWBRIDGE_API_TOKEN": "t"}, []string{"--api", "http://127.0.0.1:1", "--name-prefix", "K8S/"}, "name prefix"},
		{"log level", map[string]string{"DRAWBRIDGE_API_TOKEN": "t"}, []string{"--api", "http://127.0.0.1:1", "--log-level", "loud"}, "log-level"},
		{"no kubeconfig outside a cluster", map[string]string{"DRAWBRIDGE_API_TOKEN": "t", "KUBERNETES_SERVICE_HOST": ""},
			[]string{"--api", "http://127.0.0.1:1"}, "not in a cluster"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			cmd := newControllerCmd()
			cmd.SetArgs(c.args)
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			err := cmd.Execute()
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("got %v, want exit code 2", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			if strings.Contains(err.Error(), ":pw@") {
				t.Fatalf("error %q repeats a password", err)
			}
		})
	}
}
