package main

import (
	"testing"

	"github.com/spf13/pflag"
)

// A dev agent never picks up the installed /etc/drawbridge/drawbridge.yaml:
// with the package installed on the same machine, `make run` would otherwise
// start a production-configured node (and exit on its missing secrets).
func TestDevAgentReadsOnlyAnExplicitConfigFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		flag string
		dev  bool
		want string
	}{
		{name: "dev without --config", dev: true, want: ""},
		{name: "dev with --config", flag: "/tmp/x.yaml", dev: true, want: "/tmp/x.yaml"},
		{name: "--config wins", flag: "/tmp/y.yaml", want: "/tmp/y.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := configFileInUse(tc.flag, tc.dev); got != tc.want {
				t.Errorf("configFileInUse(%q, %v) = %q, want %q", tc.flag, tc.dev, got, tc.want)
			}
		})
	}
}

func TestDevRequested(t *testing.T) {
	flags := func(args ...string) *pflag.FlagSet {
		f := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f.Bool("dev", false, "")
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f
	}
	t.Setenv("DRAWBRIDGE_DEV", "")
	if devRequested(flags()) {
		t.Error("no flag, no env: dev requested")
	}
	if !devRequested(flags("--dev")) {
		t.Error("--dev: dev not requested")
	}
	t.Setenv("DRAWBRIDGE_DEV", "true")
	if !devRequested(flags()) {
		t.Error("DRAWBRIDGE_DEV=true: dev not requested")
	}
	if devRequested(flags("--dev=false")) {
		t.Error("--dev=false beats the environment, as flags beat env everywhere else")
	}
}
